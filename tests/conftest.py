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


# Booted modules by how long they take (longest first), so that the two units xdist hands a
# worker at the start are not two long ones.
HEAVIEST_FIRST = ["test_adopt_manual", "test_qubes_booted", "test_qubes_sls", "test_readme_qubes", "test_node_sls"]


def _boots_qubes(item) -> bool:
    module = getattr(item, "module", None)
    return module is not None and any(hasattr(module, name) for name in ("containers_work", "Lab", "Template", "AppVM"))


def pytest_collection_modifyitems(items):
    """Tests of modules that use the booted qubes (they import `containers_work`, `Lab` or the
    qube classes) get the `booted` mark: `make test-matrix` leaves them out. They also run
    first: each such module takes minutes on one xdist worker (pytest.ini keeps this order with
    --no-loadscope-reorder), so the many short modules fill the other workers meanwhile and
    no long one starts last."""
    booted = {id(item) for item in items if _boots_qubes(item)}
    for item in items:
        if id(item) in booted:
            item.add_marker(pytest.mark.booted)

    def rank(item) -> tuple[int, int]:
        name = item.path.stem
        return (id(item) not in booted, HEAVIEST_FIRST.index(name) if name in HEAVIEST_FIRST else len(HEAVIEST_FIRST))

    items.sort(key=rank)  # stable: the order within each module stays
