"""cjdns.adopted through Salt's loader, on files under tmp_path: the manual's config becomes the
managed one with no other copy of its key left (README "Coming from the manual"), unless a
backup is asked for; symbolic links and configs the formula could not edit afterwards are
refused with every file byte-identical. The booted version of the whole path is
test_adopt_manual.py."""

import hashlib
import os

import pytest

from support.saltenv import VECTORS, SaltEnv

GENCONF = (VECTORS / "genconf/genconf-1.conf").read_text()
# No "version": 2 and a trailing comma: only cjdroute's old lenient reader takes it.
LENIENT = GENCONF.replace('"version": 2', '"versionless": 2,')


@pytest.fixture(scope="module")
def salt(tmp_path_factory):
    return SaltEnv(tmp_path_factory.mktemp("adopt")).loader()[0]


def adopt(salt, layout, test=False, **kwargs):
    (ret,) = salt["state.single"]("cjdns.adopted", name=str(layout["name"]),
                                  sources=[str(layout["source"]), str(layout["legacy"])],
                                  backup=str(layout["backup"]), test=test, **kwargs).values()
    return ret


@pytest.fixture
def layout(tmp_path):
    (tmp_path / "rw").mkdir()
    (tmp_path / "etc-cjdns").mkdir(mode=0o700)
    source = tmp_path / "rw/cjdroute.conf"
    source.write_text(GENCONF)
    source.chmod(0o600)
    return {"root": tmp_path, "source": source, "legacy": tmp_path / "etc-cjdroute.conf",
            "name": tmp_path / "etc-cjdns/cjdroute.conf", "backup": tmp_path / "etc-cjdns/cjdroute.conf.manual-backup"}


def tree(root):
    """Every path under root: file digest and mode, link target, or 'dir'."""
    out = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            out[name] = "->" + os.readlink(path)
        elif path.is_file():
            out[name] = (hashlib.sha256(path.read_bytes()).hexdigest(), oct(path.stat().st_mode & 0o777))
        else:
            out[name] = "dir"
    return out


def key_copies(root):
    private = GENCONF.split('"privateKey": "')[1].split('"')[0]
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and private in p.read_text())


def test_adoption_leaves_no_other_copy_of_the_key(salt, layout):
    """README: "the old file and its bind are removed, so no other copy of the key is left"."""
    before = tree(layout["root"])
    dry = adopt(salt, layout, test=True)
    assert dry["result"] is None and tree(layout["root"]) == before
    ret = adopt(salt, layout)
    assert ret["result"] is True and ret["changes"] == dry["changes"]
    assert ret["changes"] == {"adopted": {"old": str(layout["source"]), "new": str(layout["name"])},
                              "removed": [str(layout["source"])]}
    assert layout["name"].read_text() == GENCONF and layout["name"].stat().st_mode & 0o777 == 0o600
    assert key_copies(layout["root"]) == ["etc-cjdns/cjdroute.conf"]
    again = adopt(salt, layout)
    assert again["result"] is True and again["changes"] == {}


def test_a_backup_is_kept_0600_only_on_request(salt, layout):
    ret = adopt(salt, layout, keep_backup=True)
    assert ret["result"] is True and ret["changes"]["backup"] == str(layout["backup"])
    assert layout["backup"].read_text() == GENCONF and layout["backup"].stat().st_mode & 0o777 == 0o600
    assert key_copies(layout["root"]) == ["etc-cjdns/cjdroute.conf", "etc-cjdns/cjdroute.conf.manual-backup"]
    layout["backup"].chmod(0o644)  # drift: repaired and reported
    dry = adopt(salt, layout, test=True, keep_backup=True)
    assert dry["result"] is None and layout["backup"].stat().st_mode & 0o777 == 0o644
    fixed = adopt(salt, layout, keep_backup=True)
    assert fixed["changes"] == dry["changes"] == {"backup_mode": {"old": "0o644", "new": "0o600"}}
    assert layout["backup"].stat().st_mode & 0o777 == 0o600
    assert adopt(salt, layout, keep_backup=True)["changes"] == {}


def test_a_backup_left_by_an_earlier_version_is_removed_once_the_config_is_editable(salt, layout):
    layout["name"].write_text(GENCONF)
    layout["source"].unlink()
    layout["backup"].write_text(GENCONF)
    layout["backup"].chmod(0o644)
    before = tree(layout["root"])
    dry = adopt(salt, layout, test=True)
    assert dry["result"] is None and dry["changes"] == {"removed": [str(layout["backup"])]}
    assert tree(layout["root"]) == before
    ret = adopt(salt, layout)
    assert ret["result"] is True and ret["changes"] == dry["changes"] and not layout["backup"].exists()
    assert key_copies(layout["root"]) == ["etc-cjdns/cjdroute.conf"]
    assert adopt(salt, layout)["changes"] == {}


def test_a_backup_is_kept_while_the_adopted_config_cannot_be_edited(salt, layout):
    layout["name"].write_text(LENIENT)
    layout["source"].unlink()
    layout["backup"].write_text(GENCONF)
    before = tree(layout["root"])
    ret = adopt(salt, layout)
    assert ret["result"] is True and ret["changes"] == {}
    assert f"kept the backup {layout['backup']}" in ret["comment"]
    assert tree(layout["root"]) == before


def refused(salt, layout, reason):
    before = tree(layout["root"])
    for test in (True, False):
        ret = adopt(salt, layout, test=test)
        assert ret["result"] is False and reason in ret["comment"], ret["comment"]
        assert ret["changes"] == {} and "nothing was changed" in ret["comment"]
        assert tree(layout["root"]) == before


def test_a_manual_config_that_is_a_symlink_is_refused(salt, layout):
    elsewhere = layout["root"] / "elsewhere.conf"
    layout["source"].rename(elsewhere)
    layout["source"].symlink_to(elsewhere)
    refused(salt, layout, f"{layout['source']} is a symbolic link (to {elsewhere}); refusing to adopt through it")


def test_a_legacy_path_that_is_a_symlink_is_refused(salt, layout):
    elsewhere = layout["root"] / "elsewhere.conf"
    elsewhere.write_text(GENCONF)
    layout["legacy"].symlink_to(elsewhere)
    refused(salt, layout, f"{layout['legacy']} is a symbolic link")


def test_a_lenient_manual_config_is_refused_and_kept(salt, layout):
    """Without "version": 2 the formula could not edit it after adopting it: nothing moves."""
    layout["source"].write_text(LENIENT)
    refused(salt, layout, "the file has no \"version\": 2 and only cjdroute's old lenient reader accepts it")


def test_a_manual_config_that_is_not_a_regular_file_is_refused(salt, layout):
    layout["source"].unlink()
    layout["source"].mkdir()
    refused(salt, layout, "is not a regular file")


def test_an_interrupted_adoption_is_finished(salt, layout):
    """Stopped after writing the adopted config, before removing the source: the source, the
    same bytes and so another copy of the key, goes on the next apply."""
    layout["name"].write_text(GENCONF)
    before = tree(layout["root"])
    dry = adopt(salt, layout, test=True)
    assert dry["result"] is None and dry["changes"] == {"removed": [str(layout["source"])]}
    assert tree(layout["root"]) == before
    ret = adopt(salt, layout)
    assert ret["result"] is True and ret["changes"] == dry["changes"] and not layout["source"].exists()
    assert key_copies(layout["root"]) == ["etc-cjdns/cjdroute.conf"]


def test_a_manual_config_that_differs_from_the_adopted_one_is_left_alone(salt, layout):
    layout["name"].write_text(GENCONF.replace('"beacon": 2', '"beacon": 0', 1))
    before = tree(layout["root"])
    ret = adopt(salt, layout)
    assert ret["result"] is True and ret["changes"] == {} and f"{layout['source']} left alone" in ret["comment"]
    assert tree(layout["root"]) == before
