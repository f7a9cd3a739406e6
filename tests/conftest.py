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


# The order modules start in (pytest.ini keeps it with --no-loadscope-reorder; xdist's default
# sorts by test count, which put these minutes-long, few-test modules last). xdist hands each
# worker two modules at the start, and another whenever it has two tests or fewer left, so: the
# three longest first, one per worker (test_fleet: a master and five minion machines through
# nine fleet changes); the next ones (each 2-4 minutes) after a quarter of the short modules,
# so that no worker starts with two long ones and none is left last.
LONGEST_FIRST = ["test_fleet", "test_qubes_booted", "test_adopt_manual"]
LONG_LATER = ["test_qubes_sls", "test_readme_qubes", "test_node_sls"]


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

    modules = list(dict.fromkeys(item.path for item in items))
    first = [m for name in LONGEST_FIRST for m in modules if m.stem == name]
    later = [m for name in LONG_LATER for m in modules if m.stem == name]
    rest = [m for m in modules if m not in first and m not in later]
    rest.sort(key=lambda m: not any(id(i) in booted for i in items if i.path == m))  # other booted ones first
    quarter = len(rest) // 4
    order = {m: n for n, m in enumerate(first + rest[:quarter] + later + rest[quarter:])}
    items.sort(key=lambda item: order[item.path])  # stable: the order within each module stays
