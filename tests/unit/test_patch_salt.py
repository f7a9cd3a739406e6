"""tests/support/patch_salt.py: the venv's Salt carries the fixes salt-ssh into Python 3.13
needs, and the tool refuses code it does not know."""

import hashlib
import importlib.metadata
import pathlib
import shutil
import sys
import urllib.parse

import pytest

from support import patch_salt

SALT_VERSION = importlib.metadata.version("salt")
PATCHED_HERE = SALT_VERSION in patch_salt.NEEDS_PATCHES
FILES = ("utils/url.py", "config/__init__.py")


def salt_copy(tmp_path: pathlib.Path, unpatch: bool = False) -> pathlib.Path:
    """The two files the tool edits, copied from the venv's Salt (optionally with the edits undone)."""
    installed, _ = patch_salt.installed_salt()
    copy = tmp_path / "salt"
    for name in FILES:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(installed / name, copy / name)
    if unpatch:
        for edit in patch_salt.NEEDS_PATCHES[SALT_VERSION]:
            file = copy / edit.path
            file.write_text(file.read_text().replace(edit.new, edit.old))
    return copy


def digests(directory: pathlib.Path) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in FILES}


def test_the_venv_salt_is_patched_as_its_version_needs(capsys):
    assert patch_salt.main(["--check"]) == 0
    out = capsys.readouterr().out
    if PATCHED_HERE:
        assert f"all {len(patch_salt.NEEDS_PATCHES[SALT_VERSION])} edits already applied" in out
    else:
        assert "no patches needed (fixed upstream)" in out


def test_salt_urls_do_not_depend_on_how_python_writes_file_urls(monkeypatch):
    """Python 3.13's urlunparse writes ("file", "", "top.sls", ...) as "file:top.sls"."""
    import salt.utils.url

    def like_python_3_13(parts):
        return urllib.parse.urlunparse(parts).replace("file:///", "file:", 1)

    monkeypatch.setattr(salt.utils.url, "urlunparse", like_python_3_13)
    assert salt.utils.url.create("top.sls") == "salt://top.sls"
    assert salt.utils.url.create("cjdns/node/init.sls", saltenv="user") == "salt://cjdns/node/init.sls?saltenv=user"


def test_extension_dirs_go_after_the_standard_library(tmp_path, monkeypatch):
    import salt.config

    monkeypatch.setattr(sys, "path", list(sys.path))
    salt.config.insert_system_path({"root_dir": "/"}, [str(tmp_path)])
    assert sys.path[-1] == str(tmp_path)


@pytest.mark.skipif(not PATCHED_HERE, reason=f"Salt {SALT_VERSION} needs no patches")
def test_patches_an_unpatched_copy_once(tmp_path, capsys):
    copy = salt_copy(tmp_path, unpatch=True)
    args = ["--salt-dir", str(copy), "--version", SALT_VERSION]
    assert patch_salt.main(args) == 0
    assert "already" not in capsys.readouterr().out
    assert digests(copy) == digests(patch_salt.installed_salt()[0])
    assert patch_salt.main(args) == 0
    assert "nothing to change" in capsys.readouterr().out
    assert digests(copy) == digests(patch_salt.installed_salt()[0])


def test_unknown_code_is_refused_and_nothing_is_written(tmp_path, capsys):
    copy = salt_copy(tmp_path)
    url = copy / "utils/url.py"
    text = url.read_text()
    for edit in patch_salt.NEEDS_PATCHES["3007.13"]:
        text = text.replace(edit.new, "").replace(edit.old, "")
    url.write_text(text)
    before = digests(copy)
    assert patch_salt.main(["--salt-dir", str(copy), "--version", "3007.13"]) == 1
    err = capsys.readouterr().err
    assert f"{url}: expected exactly one of these texts, found neither" in err
    assert patch_salt.URL_IMPORT.old in err or patch_salt.URL_CREATE.old in err
    assert digests(copy) == before


@pytest.mark.skipif(not PATCHED_HERE, reason=f"Salt {SALT_VERSION} has no unfixed code to show")
def test_an_unlisted_version_with_unfixed_code_is_refused(tmp_path, capsys):
    copy = salt_copy(tmp_path, unpatch=True)
    before = digests(copy)
    assert patch_salt.main(["--salt-dir", str(copy), "--version", "3007.99"]) == 1
    assert "Salt 3007.99 still has the unfixed code below and is not listed in NEEDS_PATCHES" in capsys.readouterr().err
    assert digests(copy) == before
