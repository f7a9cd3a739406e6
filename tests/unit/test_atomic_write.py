"""Atomic writes: a failure at any point leaves the old file byte-identical."""

import hashlib
import os

import pytest

from support.saltenv import VECTORS, load_module

cj = load_module()
OLD = (VECTORS / "genconf/genconf-1.conf").read_text()
NEW = cj.set_path(OLD, ("admin", "password"), "changed")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "cjdroute.conf"
    path.write_text(OLD)
    path.chmod(0o600)
    return path


def leftovers(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


@pytest.mark.parametrize("step", ["write", "fsync", "replace", "fchmod"])
def test_failure_at_each_step_keeps_the_old_file(conf, monkeypatch, step):
    before = digest(conf)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cj.os, step, boom)
    with pytest.raises(OSError, match="No space left"):
        cj.write_config(str(conf), NEW)
    monkeypatch.undo()
    assert digest(conf) == before
    assert leftovers(conf) == []


def test_short_writes_are_completed(conf, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(cj.os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    cj.write_config(str(conf), NEW)
    assert conf.read_text() == NEW


def test_new_file_is_0600_whatever_the_umask(tmp_path):
    old_umask = os.umask(0)
    try:
        cj.write_config(str(tmp_path / "c.conf"), NEW)
    finally:
        os.umask(old_umask)
    assert (tmp_path / "c.conf").stat().st_mode & 0o777 == 0o600


def test_replacing_keeps_0600_even_if_the_old_file_was_wider(conf):
    conf.chmod(0o644)
    cj.write_config(str(conf), NEW)
    assert conf.stat().st_mode & 0o777 == 0o600 and conf.read_text() == NEW


def test_text_the_strict_parser_refuses_is_never_written(conf):
    before = digest(conf)
    with pytest.raises(cj.ConfigSyntaxError):
        cj.write_config(str(conf), NEW.replace('"version": 2', '"version": 2,'))
    with pytest.raises(cj.ConfigSyntaxError, match="no \"version\": 2"):
        cj.write_config(str(conf), '{ "a": 1, }')
    assert digest(conf) == before


def test_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere.conf"
    target.write_text(OLD)
    link = tmp_path / "cjdroute.conf"
    link.symlink_to(target)
    with pytest.raises(cj.ConfigError, match="symbolic link"):
        cj.write_config(str(link), NEW)
    assert target.read_text() == OLD and link.is_symlink()


def test_directory_is_refused(tmp_path):
    (tmp_path / "cjdroute.conf").mkdir()
    with pytest.raises(cj.ConfigError, match="not a regular file"):
        cj.write_config(str(tmp_path / "cjdroute.conf"), NEW)


def test_lock_serializes(tmp_path):
    path = str(tmp_path / "c.conf")
    with cj.locked(path):
        with pytest.raises(cj.ConfigError, match="another run is editing it"):
            with cj.locked(path, timeout=0.2):
                pass
    with cj.locked(path, timeout=0.2):
        pass
