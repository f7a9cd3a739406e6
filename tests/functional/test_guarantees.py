"""The node's guarantees hold on every apply, not only on the first: the private key's file and
directory (root's, 0600/0700, no symbolic link), the installed cjdroute's mode, the pinned
commit of a source build, and the formula's record written only with a reported change.
Each drift is repaired and reported, and test=True predicts it; each refusal leaves every file
byte-identical (sha256). Through Salt's state machinery (state.single, in process)."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from support.saltenv import TESTS, VECTORS, SaltEnv, load_module

sys.path.insert(0, str(TESTS / "emulation"))
from fake_cjdns_repo import make_repo  # noqa: E402

cj = load_module()
GENCONF = (VECTORS / "genconf/genconf-1.conf").read_text()
OTHER_USER = 65534  # nobody


@pytest.fixture(scope="module")
def salt(tmp_path_factory):
    return SaltEnv(tmp_path_factory.mktemp("guarantees")).loader()[0]


def single(salt, fun, test=False, **kwargs):
    result = salt["state.single"](fun, test=test, **kwargs)
    assert isinstance(result, dict), result
    (ret,) = result.values()
    return ret


def tree(*roots):
    """sha256, mode and owner of every file and directory under roots (links by target)."""
    entries = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            info = path.lstat()
            if path.is_symlink():
                entries[str(path)] = "->" + os.readlink(path)
            elif path.is_file():
                entries[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), oct(info.st_mode), info.st_uid)
            else:
                entries[str(path)] = (oct(info.st_mode), info.st_uid)
    return entries


@pytest.fixture
def conf(tmp_path):
    directory = tmp_path / "cjdns"
    directory.mkdir(mode=0o700)
    path = directory / "cjdroute.conf"
    path.write_text(GENCONF)
    path.chmod(0o600)
    return path


# -- the config and its directory ----------------------------------------------------------


def test_loosened_modes_and_owner_are_repaired_and_reported_on_every_apply(salt, conf):
    # What the issue did: chmod 644 the config, 755 its directory (and hand both to another user).
    conf.chmod(0o644)
    conf.parent.chmod(0o755)
    os.chown(conf, OTHER_USER, OTHER_USER)
    os.chown(conf.parent, OTHER_USER, OTHER_USER)
    before = tree(conf.parent)
    dry = single(salt, "cjdns.protected", test=True, name=str(conf))
    assert tree(conf.parent) == before
    real = single(salt, "cjdns.protected", name=str(conf))
    expected = {
        str(conf.parent): {"mode": {"old": "0755", "new": "0700"}, "owner": {"old": "65534:65534", "new": "0:0"}},
        str(conf): {"mode": {"old": "0644", "new": "0600"}, "owner": {"old": "65534:65534", "new": "0:0"}},
    }
    assert dry["result"] is None and dry["changes"] == expected
    assert real["result"] is True and real["changes"] == expected
    assert conf.stat().st_mode & 0o7777 == 0o600 and conf.parent.stat().st_mode & 0o7777 == 0o700
    assert (conf.stat().st_uid, conf.parent.stat().st_uid) == (0, 0)
    assert conf.read_text() == GENCONF
    again = single(salt, "cjdns.protected", name=str(conf))
    assert again["result"] is True and again["changes"] == {}
    assert single(salt, "cjdns.protected", test=True, name=str(conf))["changes"] == {}


def test_a_setuid_or_group_readable_config_is_narrowed(salt, conf):
    conf.chmod(0o4640)
    real = single(salt, "cjdns.protected", name=str(conf))
    assert real["changes"] == {str(conf): {"mode": {"old": "4640", "new": "0600"}}}
    assert conf.stat().st_mode & 0o7777 == 0o600


def test_a_symlinked_config_directory_is_refused_and_nothing_is_written(salt, tmp_path):
    # /etc/cjdns -> a world-writable directory owned by another user (the case).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o777)
    os.chown(elsewhere, OTHER_USER, OTHER_USER)
    link = tmp_path / "cjdns"
    link.symlink_to(elsewhere)
    conf = link / "cjdroute.conf"
    before = tree(tmp_path)
    protected = single(salt, "cjdns.protected", name=str(conf))
    assert protected["result"] is False and protected["changes"] == {}
    assert f"{link}: is a symbolic link (to {elsewhere}); refusing to use it" in protected["comment"]
    # The states that write the key refuse it on their own too (in a highstate they are never
    # reached: they require cjdns.protected).
    identity = single(salt, "cjdns.identity", name=str(conf), udp_port=47300)
    assert identity["result"] is False and "is a symbolic link" in identity["comment"]
    assert identity["changes"] == {}
    assert tree(tmp_path) == before and list(elsewhere.iterdir()) == []


def test_a_symlinked_config_is_refused_and_left_as_it_is(salt, conf, tmp_path):
    real = tmp_path / "real.conf"
    real.write_text(GENCONF)
    conf.unlink()
    conf.symlink_to(real)
    before = tree(tmp_path)
    for test in (True, False):
        ret = single(salt, "cjdns.protected", test=test, name=str(conf))
        assert ret["result"] is False and ret["changes"] == {}
        assert f"{conf}: is a symbolic link (to {real}); refusing to use it" in ret["comment"]
    assert tree(tmp_path) == before


def test_a_missing_config_is_left_to_the_identity_state(salt, tmp_path):
    conf = tmp_path / "cjdns" / "cjdroute.conf"
    ret = single(salt, "cjdns.protected", name=str(conf))
    assert ret["result"] is True and ret["changes"] == {} and not conf.parent.exists()
    made = single(salt, "cjdns.identity", name=str(conf), udp_port=47300)
    assert made["result"] is True
    assert conf.stat().st_mode & 0o7777 == 0o600 and conf.parent.stat().st_mode & 0o7777 == 0o700
    assert single(salt, "cjdns.protected", name=str(conf))["changes"] == {}


# -- the installed cjdroute ----------------------------------------------------------------


@pytest.fixture
def binary(tmp_path):
    upstream = tmp_path / "cjdroute-v22.3"
    upstream.write_bytes(b"#!/bin/sh\necho fake cjdroute\n")
    target = tmp_path / "bin" / "cjdroute"
    args = dict(name=str(target), method="binary", url=f"file://{upstream}",
                sha256=hashlib.sha256(upstream.read_bytes()).hexdigest(), tools=["cjdnstool"])
    return target, args


def test_a_setuid_world_writable_cjdroute_is_repaired_and_reported(salt, binary):
    target, args = binary
    assert single(salt, "cjdns.installed", **args)["result"] is True
    tool = target.with_name("cjdnstool")
    tool.write_bytes(b"#!/bin/sh\n")
    os.chown(tool, OTHER_USER, 0)  # before chmod: chown clears setuid and setgid
    target.chmod(0o4777)
    tool.chmod(0o2775)
    content = target.read_bytes()
    dry = single(salt, "cjdns.installed", test=True, **args)
    assert target.stat().st_mode & 0o7777 == 0o4777
    real = single(salt, "cjdns.installed", **args)
    expected = {"modes": {str(target): {"mode": {"old": "4777", "new": "0755"}},
                          str(tool): {"mode": {"old": "2775", "new": "0755"}, "owner": {"old": "65534:0", "new": "0:0"}}}}
    assert dry["result"] is None and dry["changes"] == expected
    assert real["result"] is True and real["changes"] == expected
    assert target.stat().st_mode & 0o7777 == 0o755 and tool.stat().st_mode & 0o7777 == 0o755
    assert tool.stat().st_uid == 0 and target.read_bytes() == content
    assert single(salt, "cjdns.installed", **args)["changes"] == {}


def test_a_cjdroute_that_is_a_symbolic_link_is_refused(salt, binary, tmp_path):
    target, args = binary
    target.parent.mkdir()
    elsewhere = tmp_path / "elsewhere-cjdroute"
    elsewhere.write_bytes(b"#!/bin/sh\n")
    target.symlink_to(elsewhere)
    before = tree(tmp_path)
    ret = single(salt, "cjdns.installed", **args)
    assert ret["result"] is False and f"{target}: is a symbolic link" in ret["comment"]
    assert tree(tmp_path) == before


# -- a source build pinned to a commit -----------------------------------------------------


@pytest.fixture
def source(tmp_path):
    repo = make_repo(tmp_path / "upstream")
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "cjdns-v22.3^{commit}"], capture_output=True,
                            text=True, check=True).stdout.strip()
    target = tmp_path / "bin" / "cjdroute"
    args = dict(name=str(target), method="source", repo=f"file://{repo}", builddir=str(tmp_path / "build"),
                rev="cjdns-v22.3", tools=["cjdnstool"])
    return repo, commit, target, args


def test_a_pinned_commit_is_built_and_checked(salt, source):
    repo, commit, target, args = source
    dry = single(salt, "cjdns.installed", test=True, commit=commit, **args)
    real = single(salt, "cjdns.installed", commit=commit, **args)
    expected = {"cjdroute": {"old": None, "new": "cjdns-v22.3"}, "commit": {"old": None, "new": commit}}
    assert dry["result"] is None and dry["changes"] == expected
    assert real["result"] is True and real["changes"] == expected and commit in real["comment"]
    assert single(salt, "cjdns.installed", commit=commit, **args)["changes"] == {}
    # Pinning an already built tag to its own commit rebuilds nothing.
    assert single(salt, "cjdns.installed", **args)["changes"] == {}


def test_a_moved_tag_is_refused_before_anything_is_built(salt, source):
    repo, commit, target, args = source
    assert single(salt, "cjdns.installed", commit=commit, **args)["result"] is True
    build = target.parent.parent / "build"
    # Upstream moves the tag to another commit; without the stamp the state must build again.
    subprocess.run(["git", "-C", repo, "tag", "-f", "cjdns-v22.3", "cjdns-v22.4"], check=True, capture_output=True)
    moved = subprocess.run(["git", "-C", repo, "rev-parse", "cjdns-v22.3^{commit}"], capture_output=True,
                           text=True, check=True).stdout.strip()
    (build / ".cjdns-formula-build.json").unlink()
    installed, built = tree(target.parent), {k: v for k, v in tree(build).items() if "/.git" not in k}
    ret = single(salt, "cjdns.installed", commit=commit, **args)
    assert ret["result"] is False and ret["changes"] == {}
    assert (f"install.source.commit: cjdns-v22.3 in file://{repo} is commit {moved}, not the pinned {commit}; "
            "nothing built or installed") in ret["comment"]
    # cjdroute and the checked-out tree are as they were (only git's refs were fetched).
    assert tree(target.parent) == installed
    assert {k: v for k, v in tree(build).items() if "/.git" not in k} == built
    assert "cjdns-v22.3" in (build / ".built-from").read_text()


@pytest.mark.parametrize("commit", ["abc123", "A" * 40, "g" * 40, "0" * 41])
def test_a_commit_that_is_not_a_full_commit_id_is_refused(salt, source, commit):
    repo, _, target, args = source
    ret = single(salt, "cjdns.installed", commit=commit, **args)
    assert ret["result"] is False
    assert f"install.source.commit: {commit!r} must be empty or a commit id (40 lowercase hex digits)" in ret["comment"]
    assert not target.parent.exists() and not (target.parent.parent / "build").exists()


# -- the formula's record (.cjdns-formula.json) ---------------------------------------------


def test_the_record_is_written_only_with_a_reported_change(salt, conf):
    # Pillar names an incoming peer the config already has, by hand, with the same password:
    # nothing to change, so nothing is written (the entry stays the user's, never pruned).
    text = cj.set_path(GENCONF, ("authorizedPasswords",), [{"password": "alice-pw", "user": "alice"}])
    settings = {"authorized_passwords": {"alice": {"password": "alice-pw"}}, "admin_password": "admin-pw"}
    conf.write_text(cj.set_path(text, ("admin", "password"), "admin-pw"))
    before = tree(conf.parent)
    ret = single(salt, "cjdns.config", name=str(conf), settings=settings)
    assert ret["result"] is True and ret["changes"] == {}
    assert tree(conf.parent) == before and not (conf.parent / ".cjdns-formula.json").exists()
    # A real change writes it, with the entries the formula now manages.
    settings["authorized_passwords"]["bob"] = {"password": "bob-pw"}
    changed = single(salt, "cjdns.config", name=str(conf), settings=settings)
    assert set(changed["changes"]) == {"authorizedPasswords.bob"}
    record = json.loads((conf.parent / ".cjdns-formula.json").read_text())
    assert record["users"] == ["alice", "bob"]
    assert (conf.parent / ".cjdns-formula.json").stat().st_mode & 0o777 == 0o600
    assert single(salt, "cjdns.config", name=str(conf), settings=settings)["changes"] == {}


def test_the_node_states_require_the_guarantees(tmp_path):
    """The SLS wiring: nothing writes the key before cjdns.protected passed; cjdroute starts
    only after the firewall state succeeded (require, not just order)."""
    for kind, pillar, sls in (("proxy", {"qubes": {"type": "app"}}, "cjdns.proxy"), ("node", {}, "cjdns.node")):
        states = SaltEnv(tmp_path / kind, pillar=pillar).call("state.show_sls", sls).data
        assert isinstance(states, dict), states

        def requires(state_id):
            found = []
            for key, value in states[state_id].items():
                if not key.startswith("__"):
                    for arg in value:
                        if isinstance(arg, dict) and "require" in arg:
                            found += [list(r.values())[0] for r in arg["require"]]
            return found

        assert f"cjdns-{kind}-confdir-protected" in requires(f"cjdns-{kind}-identity")
        if kind == "proxy":
            assert "cjdns-proxy-confdir-protected" in requires("cjdns-proxy-manual-config-adopted")
            assert "cjdns-proxy-confdir-bound" in requires("cjdns-proxy-confdir-protected")
            assert "cjdns-proxy-firewall-loaded" in requires("cjdns-proxy-running")
            assert "cjdns-proxy-firewall-rules" in requires("cjdns-proxy-firewall-loaded")
        else:
            assert not [s for s in states if "firewall" in s]  # plain nodes: the host's firewall is the user's


def test_pillar_with_a_short_commit_is_refused_before_anything_runs(tmp_path):
    import yaml

    from support.saltenv import REPO
    defaults = yaml.safe_load((REPO / "cjdns/defaults.yaml").read_text())["cjdns"]
    mods = SaltEnv(tmp_path / "salt", pillar={"cjdns": {"install": {"source": {"commit": "1a2b3c4"}}}}).loader()[0]
    ret = single(mods, "cjdns.pillar_valid", name="cjdns", defaults=defaults)
    assert ret["result"] is False
    assert "cjdns.install.source.commit: '1a2b3c4' must be empty or a commit id (40 lowercase hex digits)" in ret["comment"]
