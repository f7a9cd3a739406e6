import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from support.saltenv import VECTORS, SaltEnv, load_module  # noqa: E402


@pytest.fixture(scope="session")
def cj():
    """The execution module as plain Python."""
    return load_module()


@pytest.fixture
def salt_env(tmp_path):
    return SaltEnv(tmp_path / "salt")


@pytest.fixture(scope="session")
def vectors() -> pathlib.Path:
    return VECTORS


def pytest_collection_modifyitems(items):
    """Tests of modules that use the booted qubes (they import `containers_work`, `Lab` or the
    qube classes) get the `booted` mark: `make test-matrix` leaves them out."""
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and any(hasattr(module, name) for name in ("containers_work", "Lab", "Template", "AppVM")):
            item.add_marker(pytest.mark.booted)
