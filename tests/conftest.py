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
