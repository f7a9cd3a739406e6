"""cjdns.installed: a binary refused unless its sha256 matches; a source build only when the tag
changes (the source path also runs in tests/functional/test_qubes_sls.py and test_node_sls.py)."""

import hashlib
import os
import sys

import pytest

from support.saltenv import TESTS, SaltEnv

sys.path.insert(0, str(TESTS / "emulation"))
from fake_cjdns_repo import make_repo  # noqa: E402


@pytest.fixture(scope="module")
def salt(tmp_path_factory):
    return SaltEnv(tmp_path_factory.mktemp("install")).loader()[0]


def single(salt, **kwargs):
    (ret,) = salt["state.single"]("cjdns.installed", **kwargs).values()
    return ret


def test_binary_is_installed_only_with_the_right_sha256(salt, tmp_path):
    upstream = tmp_path / "cjdroute-v22.3"
    upstream.write_bytes(b"#!/bin/sh\necho fake cjdroute\n")
    digest = hashlib.sha256(upstream.read_bytes()).hexdigest()
    target = tmp_path / "bin" / "cjdroute"
    args = dict(name=str(target), method="binary", url=f"file://{upstream}")
    wrong = single(salt, **args, sha256="0" * 64)
    assert wrong["result"] is False and f"has sha256 {digest}, not {'0' * 64}; not installed" in wrong["comment"]
    assert not target.exists() and not [p for p in target.parent.iterdir()]
    dry = single(salt, **args, sha256=digest, test=True)
    assert dry["result"] is None and dry["changes"] == {"cjdroute": {"old": None, "new": digest}} and not target.exists()
    real = single(salt, **args, sha256=digest)
    assert real["result"] is True and real["changes"] == dry["changes"]
    assert target.read_bytes() == upstream.read_bytes() and os.access(target, os.X_OK)
    again = single(salt, **args, sha256=digest)
    assert again["result"] is True and again["changes"] == {}


@pytest.mark.parametrize("args, reason", [
    ({"method": "binary", "url": "http://example.org/x", "sha256": "a" * 64}, "install.binary.url"),
    ({"method": "binary", "url": "https://example.org/x", "sha256": "A" * 64}, "install.binary.sha256"),
    ({"method": "apt"}, "install.method: 'apt' must be 'source' or 'binary'"),
    ({"method": "source", "rev": "--upload-pack=x", "repo": "https://example.org/x"}, "install.source.rev"),
])
def test_bad_install_settings_are_refused(salt, tmp_path, args, reason):
    ret = single(salt, name=str(tmp_path / "cjdroute"), **args)
    assert ret["result"] is False and reason in ret["comment"]
    assert not (tmp_path / "cjdroute").exists()


def test_source_build_happens_once_per_tag(salt, tmp_path):
    repo = make_repo(tmp_path / "upstream")
    target = tmp_path / "bin" / "cjdroute"
    args = dict(name=str(target), method="source", repo=f"file://{repo}", builddir=str(tmp_path / "build"),
                tools=["cjdnstool"])
    first = single(salt, **args, rev="cjdns-v22.3")
    assert first["result"] is True and first["changes"] == {"cjdroute": {"old": None, "new": "cjdns-v22.3"}}
    assert (tmp_path / "bin" / "cjdnstool").exists()
    assert single(salt, **args, rev="cjdns-v22.3")["changes"] == {}
    upgrade = single(salt, **args, rev="cjdns-v22.4", test=True)
    assert upgrade["result"] is None and upgrade["changes"] == {"cjdroute": {"old": "cjdns-v22.3", "new": "cjdns-v22.4"}}
    assert single(salt, **args, rev="cjdns-v22.4")["changes"] == upgrade["changes"]
    assert "cjdns-v22.4" in (tmp_path / "build" / ".built-from").read_text()
    missing = single(salt, **args, rev="cjdns-v99")
    assert missing["result"] is False and "building cjdroute cjdns-v99" in missing["comment"]
