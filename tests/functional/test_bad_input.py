"""The bad-input matrix: every case gives result False (or a clear error) naming the field and
the reason, and leaves every file byte-identical (sha256)."""

import hashlib
import json
import os
import shutil
import subprocess

import pytest
import yaml

from support.saltenv import REPO, VECTORS, SaltEnv, load_module

cj = load_module()
DEFAULTS = yaml.safe_load((REPO / "cjdns/defaults.yaml").read_text())["cjdns"]
KEYS = json.loads((VECTORS / "keys.json").read_text())
GOOD_KEY = KEYS["keys"][0]["public_key"]
GENCONF = (VECTORS / "genconf/genconf-1.conf").read_text()


@pytest.fixture(scope="module")
def salt(tmp_path_factory):
    return SaltEnv(tmp_path_factory.mktemp("bad")).loader()[0]


def single(salt, fun, **kwargs):
    (ret,) = salt["state.single"](fun, **kwargs).values()
    return ret


def sha(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


# -- pillar -------------------------------------------------------------------------------

PILLAR_CASES = [
    ({"qubes": {"proxy_memory": "400"}}, "cjdns.qubes.proxy_memory: '400' must be an integer"),
    ({"qubes": {"proxy_lable": "red"}}, "cjdns.qubes.proxy_lable: unknown key (did you mean proxy_label?)"),
    ({"nodes": {}}, "cjdns.nodes: unknown key (did you mean node?)"),
    ({"node": {"udp_prot": 1}}, "cjdns.node.udp_prot: unknown key (did you mean udp_port?)"),
    ({"qubes": {"proxy": "sys cjdns"}}, "cjdns.qubes.proxy: 'sys cjdns' is not a valid qube name"),
    ({"qubes": {"template": "sys-cjdns"}}, "cjdns.qubes.proxy: must differ from cjdns.qubes.template"),
    ({"qubes": {"proxy_netvm": "sys-cjdns"}}, "cjdns.qubes.proxy_netvm: sys-cjdns cannot be its own netvm"),
    ({"qubes": {"proxy_netvm": "dom0"}}, "cjdns.qubes.proxy_netvm: 'dom0' is not a valid qube name"),
    ({"qubes": {"proxy_label": "pink"}}, "cjdns.qubes.proxy_label: 'pink' is not a Qubes label"),
    ({"qubes": {"clients": "personal"}}, "cjdns.qubes.clients: 'personal' must be a list"),
    ({"qubes": {"clients": ["dom0"]}}, "cjdns.qubes.clients: 'dom0' is not a qube that can use sys-cjdns"),
    ({"node": {"udp_port": 70000}}, "cjdns.node.udp_port: 70000 is not a port number"),
    ({"node": {"udp_port": True}}, "cjdns.node.udp_port: True must be an integer"),
    ({"install": {"method": "pip"}}, "cjdns.install.method: 'pip' must be 'source' or 'binary'"),
    ({"install": {"method": "binary", "binary": {"url": "https://example.org/c", "sha256": "abc"}}},
     "cjdns.install.binary.sha256: 'abc' must be 64 lowercase hex digits"),
    ({"install": {"method": "binary", "binary": {"url": "http://example.org/c", "sha256": "a" * 64}}},
     "cjdns.install.binary.url: 'http://example.org/c' must be an https:// URL"),
    ({"install": {"source": {"rev": "v1; rm -rf /"}}}, "cjdns.install.source.rev: 'v1; rm -rf /' is not a git tag"),
    ({"install": {"source": {"repo": "git@github.com:x/y"}}}, "cjdns.install.source.repo: 'git@github.com:x/y' must be an https:// URL"),
    ({"paths": {"config": "etc/cjdns.conf"}}, "cjdns.paths.config: 'etc/cjdns.conf' must be an absolute path"),
    ({"node": {"tun_device": "a-very-long-tun-name"}}, "cjdns.node.tun_device: 'a-very-long-tun-name' is not a Linux interface name"),
    ({"node": {"admin_password": "x" * 60}}, "cjdns.node.admin_password: longer than 53 bytes"),
    ({"node": {"admin_password": "NONE"}}, 'cjdns.node.admin_password: "NONE" turns off cjdroute\'s admin authentication'),
    ({"node": {"admin_password": 918273645}}, "cjdns.node.admin_password: an integer (value not shown) must be a string"),
    ({"node": {"tun_device": "tun:0"}}, "cjdns.node.tun_device: 'tun:0' is not a Linux interface name: ':' not allowed"),
    ({"node": {"tun_device": "tun 0"}}, "cjdns.node.tun_device: 'tun 0' is not a Linux interface name: ' ' not allowed"),
    ({"node": {"tun_device": "tun%d"}}, "cjdns.node.tun_device: 'tun%d' is not a Linux interface name: '%' not allowed"),
    ({"node": {"tun_device": ".."}}, "cjdns.node.tun_device: '..' is not a Linux interface name (1-15 characters, not '.' or '..')"),
    ({"node": {"tun_device": 'tun"0'}}, "cjdns.node.tun_device: 'tun\"0' is not a Linux interface name"),
    ({"node": {"blackhole_metric": 100}}, "cjdns.node.blackhole_metric: 100 must be 257-4294967295: above the metric of cjdroute's own"),
    ({"node": {"blackhole_metric": 2 ** 32}}, "cjdns.node.blackhole_metric: 4294967296 must be 257-4294967295"),
    ({"node": {"blackhole_metric": "500"}}, "cjdns.node.blackhole_metric: '500' must be an integer"),
    ({"node": {"authorized_passwords": {"alice": {"ipv6": "2001:db8::1"}}}},
     "cjdns.node.authorized_passwords.alice.ipv6: '2001:db8::1' is not a cjdns address (fc00::/8)"),
    ({"node": {"authorized_passwords": {"alice": {"ipv6": "fc00::zz"}}}},
     "cjdns.node.authorized_passwords.alice.ipv6: 'fc00::zz' is not an IPv6 address"),
    ({"node": {"log_to": "/var/log/cjdns"}}, "cjdns.node.log_to: '/var/log/cjdns' must be 'stdout' or empty"),
    ({"node": {"service": "cjdns.service"}}, "cjdns.node.service: 'cjdns.service' is not a systemd unit name"),
    ({"node": {"service": "cj dns"}}, "cjdns.node.service: 'cj dns' is not a systemd unit name"),
    ({"node": {"min_established_peers": -1}}, "cjdns.node.min_established_peers: -1 must be 0 or more"),
    ({"node": {"start_attempts": 0}}, "cjdns.node.start_attempts: 0 must be 1-10"),
    ({"node": {"start_interval": 301}}, "cjdns.node.start_interval: 301 must be 0-300 (seconds)"),
    ({"node": {"dns_seeds": ["seed..example"]}}, "cjdns.node.dns_seeds: must be a list of host names"),
    ({"paths": {"confdir": "/etc"}}, "cjdns.paths.confdir: '/etc' is a system directory"),
    ({"paths": {"config": "/etc/cjdns/../cjdroute.conf"}}, "cjdns.paths.config: '/etc/cjdns/../cjdroute.conf' is not normalised (write it as '/etc/cjdroute.conf')"),
    ({"paths": {"confdir": "/etc/cjdns/"}}, "cjdns.paths.confdir: '/etc/cjdns/' is not normalised (write it as '/etc/cjdns')"),
    ({"paths": {"unit": "/etc/systemd//system/cjdns.service"}}, "cjdns.paths.unit: '/etc/systemd//system/cjdns.service' is not normalised"),
    ({"paths": {"firewall": "/rw/config/qubes-firewall.d/50 cjdns"}}, "cjdns.paths.firewall: '/rw/config/qubes-firewall.d/50 cjdns' may only hold letters"),
    ({"paths": {"template_keys": "/var/lib"}}, "cjdns.paths.template_keys: '/var/lib' is a system directory"),
    ({"paths": {"config": "/etc/cjdroute.conf"}}, "cjdns.paths.config: '/etc/cjdroute.conf' must be directly in cjdns.paths.confdir ('/etc/cjdns')"),
    ({"paths": {"rw_bind_dirs": "rw/bind-dirs"}}, "cjdns.paths.rw_bind_dirs: 'rw/bind-dirs' must be an absolute path"),
    ({"install": {"prefix": "usr/bin"}}, "cjdns.install.prefix: 'usr/bin' must be an absolute path"),
    ({"install": {"source": {"builddir": "/usr/local"}}}, "cjdns.install.source.builddir: '/usr/local' is a system directory"),
    ({"install": {"tools": ["../../sbin/cjdnstool"]}}, "cjdns.install.tools[0]: '../../sbin/cjdnstool' is not a bare file name"),
    ({"install": {"tools": ["."]}}, "cjdns.install.tools[0]: '.' is not a bare file name"),
    ({"install": {"source": {"build_deps": ["gcc; reboot"]}}}, "cjdns.install.source.build_deps[0]: 'gcc; reboot' is not a Debian package name"),
    ({"install": {"source": {"build_env": {"A B": "1"}}}}, "cjdns.install.source.build_env: 'A B' is not an environment variable name"),
    ({"install": {"source": {"build_timeout": 0}}}, "cjdns.install.source.build_timeout: 0 must be 1-86400 seconds"),
    ({"install": {"source": {"proxy": "127.0.0.1:8082"}}}, "cjdns.install.source.proxy: '127.0.0.1:8082' must be http://host:port"),
    ({"node": {"dns_seeds": "seed.example"}}, "cjdns.node.dns_seeds: 'seed.example' must be a list"),
    ({"node": {"peers": {"peer.example:1": {"password": "p", "publicKey": GOOD_KEY}}}},
     "cjdns.node.peers.peer.example:1: 'peer.example' is not an IP address"),
    ({"node": {"peers": {"0.0.0.0:1": {"password": "p", "publicKey": GOOD_KEY}}}},
     "cjdns.node.peers.0.0.0.0:1: 0.0.0.0 is the unspecified address, not a peer's"),
    ({"node": {"peers": {"[fe80::1%eth0]:1": {"password": "p", "publicKey": GOOD_KEY}}}},
     "cjdns.node.peers.[fe80::1%eth0]:1: 'fe80::1%eth0' has a zone id"),
    ({"node": {"peers": {"[2001:db8::1]:1": {"password": "p", "publicKey": GOOD_KEY},
                         "[2001:0DB8::1]:01": {"password": "p", "publicKey": GOOD_KEY}}}},
     # (the pillar file lists keys sorted, so 0DB8 comes first)
     "cjdns.node.peers.[2001:db8::1]:1: the same peer as [2001:0DB8::1]:01"),
    ({"node": {"compromised_keys": ["nope.k"]}}, "cjdns.node.compromised_keys: 'nope.k': too short"),
    ({"node": {"min_established_peers": "one"}}, "cjdns.node.min_established_peers: 'one' must be an integer or null"),
    ({"packages": {"extra": ["Python3-Cryptography"]}},
     "cjdns.packages.extra[0]: 'Python3-Cryptography' is not a Debian package name"),
    ({"packages": {"template": ["python3-cryptography", "x\nrm -rf /"]}},
     "cjdns.packages.template[1]: 'x\\nrm -rf /' is not a Debian package name"),
    ({"packages": {"node": ["--allow-downgrades"]}}, "cjdns.packages.node[0]: '--allow-downgrades' is not a Debian package name"),
    ({"packages": {"node": [7]}}, "cjdns.packages.node[0]: 7 is not a Debian package name"),
    ({"packages": {"node": "python3-cryptography"}}, "cjdns.packages.node: 'python3-cryptography' must be a list"),
    ({"packages": {"extras": []}}, "cjdns.packages.extras: unknown key (did you mean extra?)"),
]


def pillar_check(tmp_path, pillar):
    mods = SaltEnv(tmp_path / "salt", pillar=pillar).loader()[0]
    return single(mods, "cjdns.pillar_valid", name="cjdns", defaults=DEFAULTS)


@pytest.mark.parametrize("override, reason", PILLAR_CASES, ids=[r.split(":")[0] + str(i) for i, (_, r) in enumerate(PILLAR_CASES)])
def test_bad_pillar_is_refused_with_field_and_reason(tmp_path, override, reason):
    ret = pillar_check(tmp_path, {"cjdns": override})
    assert ret["result"] is False and reason in ret["comment"], ret["comment"]
    assert ret["changes"] == {}


def test_every_bad_field_is_named_in_one_comment(tmp_path):
    override = {"node": {"tun_device": "tun:0", "blackhole_metric": 1, "admin_password": "NONE"},
                "paths": {"confdir": "/etc"}, "install": {"tools": ["a/b"]}}
    ret = pillar_check(tmp_path, {"cjdns": override})
    assert ret["result"] is False
    for field in ("node.tun_device", "node.blackhole_metric", "node.admin_password", "paths.confdir", "install.tools[0]"):
        assert f"\n- cjdns.{field}: " in ret["comment"], (field, ret["comment"])


def test_valid_pillar_passes(tmp_path):
    ret = pillar_check(tmp_path, yaml.safe_load((REPO / "pillar.example").read_text()))
    assert ret["result"] is True, ret["comment"]


# -- cjdroute.conf ------------------------------------------------------------------------

CONF_CASES = [
    (GENCONF.replace('"beaconPort": 64512,', '"beaconPort": 64512,,'), ":89:37: expected a \"key\" in double quotes"),
    (GENCONF.replace('"beacon": 2,', '"beacon": 2.5,', 1), ":87:28: expected ',' or '}', found '.'"),
    (GENCONF.replace('"noBackground": 0,', '"noBackground": false,'), "expected a value"),
    (GENCONF.replace('"password": "NONE"', '"password": "\\u004eONE"'), "\\xHH"),
    (GENCONF.replace('"password": "NONE"', "'password': 'NONE'"), "expected a \"key\" in double quotes, found \"'\""),
    (GENCONF.replace('"password": "NONE"\n', '"password": "NONE"\n        "extra": 1\n'), "expected ',' or '}', found '\"'"),
    (GENCONF[: len(GENCONF) // 2], "found end of file"),
    ("\x7fELF\x02\x01\x01" + "\x00" * 40, "NUL bytes"),
    ("", "expected '{' (the file must be one object), found end of file"),
    (GENCONF.replace("\n", "\r\n"), "carriage return (CRLF line ends"),
    (cj.set_path(GENCONF, ("privateKey",), KEYS["non_fc"]["entries"][0]["private_key"]), "not in fc00::/8"),
    (cj.set_path(GENCONF, ("privateKey",), "zz" * 32), "privateKey must be 64 hexadecimal characters"),
    ('{ "privateKey": "%s", }' % KEYS["keys"][0]["private_key"], "no \"version\": 2"),
]


@pytest.mark.parametrize("text, reason", CONF_CASES, ids=[f"conf{i}" for i in range(len(CONF_CASES))])
def test_bad_config_fails_identity_and_stays_byte_identical(salt, tmp_path, text, reason):
    conf = tmp_path / "cjdroute.conf"
    conf.write_bytes(text.encode("utf-8", "surrogateescape"))
    before = sha(tmp_path)
    states = [("cjdns.identity", {})]
    if "privateKey" not in reason and "fc00::/8" not in reason:
        # Key problems stop cjdns.identity, which the config and peers states require in the SLS.
        states += [("cjdns.config", {"settings": {"udp_port": 5}}),
                   ("cjdns.peers", {"peers": {"192.0.2.1:1": {"password": "p", "publicKey": GOOD_KEY}}})]
    for fun, kwargs in states:
        ret = single(salt, fun, name=str(conf), **kwargs)
        assert ret["result"] is False and reason in ret["comment"], (fun, ret["comment"])
        assert ret["comment"].startswith(str(conf))
        assert sha(tmp_path) == before


@pytest.mark.parametrize("edit, reason", [
    (lambda t: cj.delete_path(t, ("privateKey",)), "privateKey: missing"),
    (lambda t: cj.set_path(t, ("publicKey",), GOOD_KEY), "publicKey: '%s' does not belong to privateKey" % GOOD_KEY),
    (lambda t: cj.set_path(t, ("ipv6",), "fc00:0000:0000:0000:0000:0000:0000:0001"), "ipv6: 'fc00:0000"),
    (lambda t: cj.delete_path(t, ("admin", "bind")), "admin.bind: missing"),
])
def test_check_config_names_semantic_problems(salt, tmp_path, edit, reason):
    conf = tmp_path / "cjdroute.conf"
    conf.write_text(edit(GENCONF))
    with pytest.raises(Exception, match=reason.replace("(", r"\(").replace(")", r"\)")):
        salt["cjdns.check_config"](str(conf))


# -- peers --------------------------------------------------------------------------------

@pytest.mark.parametrize("peer, reason", [
    ({"password": "p"}, "publicKey: missing"),
    ({"publicKey": GOOD_KEY}, "password: missing"),
    ({"publicKey": GOOD_KEY, "password": "p\tq"}, "password: a password must not contain control characters"),
    ({"publicKey": GOOD_KEY[:-3] + "1.k", "password": "p"}, "publicKey: not a cjdns key"),
    ({"publicKey": GOOD_KEY, "password": "p", "location": "x"}, "location: unknown field"),
    ({"publicKey": GOOD_KEY, "password": "p", "login": 5}, "login: must be a string"),
])
def test_bad_peer_fails_the_peers_state_and_leaves_the_file(salt, tmp_path, peer, reason):
    conf = tmp_path / "cjdroute.conf"
    conf.write_text(GENCONF)
    before = sha(tmp_path)
    ret = single(salt, "cjdns.peers", name=str(conf), peers={"192.0.2.1:7": peer})
    assert ret["result"] is False and f"peers.192.0.2.1:7.{reason}" in ret["comment"], ret["comment"]
    assert sha(tmp_path) == before


# -- file system --------------------------------------------------------------------------

def test_config_that_is_a_directory(salt, tmp_path):
    (tmp_path / "cjdroute.conf").mkdir()
    ret = single(salt, "cjdns.identity", name=str(tmp_path / "cjdroute.conf"))
    assert ret["result"] is False and "is not a regular file" in ret["comment"]
    assert (tmp_path / "cjdroute.conf").is_dir() and not list((tmp_path / "cjdroute.conf").iterdir())


def test_config_that_is_a_symlink_out_of_its_directory(salt, tmp_path):
    outside = tmp_path / "elsewhere.conf"
    outside.write_text(GENCONF)
    (tmp_path / "cjdns").mkdir()
    link = tmp_path / "cjdns/cjdroute.conf"
    link.symlink_to(outside)
    for fun in ("cjdns.identity", "cjdns.config", "cjdns.peers"):
        ret = single(salt, fun, name=str(link))
        assert ret["result"] is False and "is a symbolic link; refusing" in ret["comment"], ret["comment"]
    assert outside.read_text() == GENCONF and link.is_symlink()


def _in_private_tmpfs(tmp_path, options: str, prepare: str, salt_args: list, env: SaltEnv):
    """Run salt-call in a private mount namespace where tmp_path/fs is a small tmpfs."""
    fs = tmp_path / "fs"
    fs.mkdir()
    script = (f"mount -t tmpfs -o size=256k,mode=0700 tmpfs {fs} && {prepare} && "
              f"mount -o remount,{options} {fs} && sha256sum {fs}/* && "
              f"\"$@\"; rc=$?; sha256sum {fs}/*; exit $rc")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           *env.command(*salt_args)], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    sums = [l for l in lines if str(fs) in l and len(l.split()[0]) == 64]
    body = "\n".join(l for l in lines if l not in sums)
    return proc, sums, json.loads(body)["local"] if body.strip().startswith("{") else None


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root to mount a tmpfs")


@needs_root
def test_read_only_directory(tmp_path):
    env = SaltEnv(tmp_path / "salt")
    conf = tmp_path / "fs/cjdroute.conf"
    (tmp_path / "g.conf").write_text(GENCONF)
    proc, sums, data = _in_private_tmpfs(tmp_path, "ro", f"cp {tmp_path}/g.conf {conf}",
                                         ["state.single", "cjdns.peers", str(conf),
                                          'peers={"192.0.2.1:1": {"password": "p", "publicKey": "%s"}}' % GOOD_KEY], env)
    (ret,) = data.values()
    assert ret["result"] is False and "Read-only file system" in ret["comment"], ret["comment"]
    assert len(sums) == 2 and sums[0] == sums[1]


@needs_root
def test_no_space_left(tmp_path):
    env = SaltEnv(tmp_path / "salt")
    conf = tmp_path / "fs/cjdroute.conf"
    (tmp_path / "g.conf").write_text(GENCONF)
    fill = f"cp {tmp_path}/g.conf {conf} && (dd if=/dev/zero of={tmp_path}/fs/fill bs=1k count=1000 2>/dev/null; true)"
    peers = {f"192.0.2.{i}:1": {"password": "p" * 40, "publicKey": GOOD_KEY} for i in range(1, 60)}
    proc, sums, data = _in_private_tmpfs(tmp_path, "rw", fill, ["state.single", "cjdns.peers", str(conf),
                                                                f"peers={json.dumps(peers)}"], env)
    (ret,) = data.values()
    assert ret["result"] is False and "No space left on device" in ret["comment"], ret["comment"]
    conf_sums = [s for s in sums if s.endswith("cjdroute.conf")]
    assert len(conf_sums) == 2 and conf_sums[0] == conf_sums[1]
    assert not [s for s in sums if ".tmp" in s]


@pytest.mark.parametrize("kwargs, reason", [
    ({"tun_device": "tun:0"}, "tun_device: 'tun:0' is not a Linux interface name"),
    ({"udp_port": 70000}, "udp_port: 70000 is not a port number"),
    ({"admin_bind": "localhost:11234"}, "admin_bind: 'localhost' is not an IP address"),
])
def test_identity_checks_its_own_arguments_before_writing(salt, tmp_path, kwargs, reason):
    """Called alone (state.single, or an SLS without cjdns.pillar), the state still refuses."""
    for existing in (False, True):
        if existing:
            (tmp_path / "cjdroute.conf").write_text(GENCONF)
        before = sha(tmp_path)
        ret = single(salt, "cjdns.identity", name=str(tmp_path / "cjdroute.conf"), **kwargs)
        assert ret["result"] is False and reason in ret["comment"], ret["comment"]
        assert sha(tmp_path) == before


@pytest.mark.parametrize("peers, reason", [
    ({"192.0.2.9:80": {"password": "p", "publicKey": GOOD_KEY}, "192.0.2.9:0080": {"password": "p", "publicKey": GOOD_KEY}},
     "peers.192.0.2.9:0080: the same peer as 192.0.2.9:80"),
    ({"[::]:5": {"password": "p", "publicKey": GOOD_KEY}}, "peers.[::]:5: :: is the unspecified address, not a peer's"),
    ({"[fe80::1%eth0]:5": {"password": "p", "publicKey": GOOD_KEY}}, "peers.[fe80::1%eth0]:5: 'fe80::1%eth0' has a zone id"),
    ({"255.255.255.255:5": {"password": "p", "publicKey": GOOD_KEY}}, "is the broadcast address, not a peer's"),
])
def test_peers_that_are_one_peer_or_no_peer_fail_the_peers_state(salt, tmp_path, peers, reason):
    conf = tmp_path / "cjdroute.conf"
    conf.write_text(GENCONF)
    before = sha(tmp_path)
    for test in (True, False):
        ret = single(salt, "cjdns.peers", name=str(conf), peers=peers, test=test)
        assert ret["result"] is False and reason in ret["comment"], ret["comment"]
        assert sha(tmp_path) == before


def test_a_connect_to_of_the_wrong_type_fails_the_peers_state(salt, tmp_path):
    conf = tmp_path / "cjdroute.conf"
    conf.write_text(cj.set_path(GENCONF, ("interfaces", "UDPInterface", 0, "connectTo"), [{"password": "p"}]))
    before = sha(tmp_path)
    ret = single(salt, "cjdns.peers", name=str(conf), peers={"192.0.2.1:1": {"password": "p", "publicKey": GOOD_KEY}})
    assert ret["result"] is False, ret["comment"]
    assert "interfaces/UDPInterface/0/connectTo: is a list, not an object; cjdroute ignores it" in ret["comment"]
    assert sha(tmp_path) == before
    check = salt["cjdns.check_config"](str(conf))
    assert any("connectTo: is a list, not an object" in w for w in check["warnings"])


def test_peer_strings_with_spaces_pass_the_peers_state_and_check_config(salt, tmp_path):
    """cjdroute v20.7 takes them (--cleanconf, and two nodes with such credentials peer)."""
    conf = tmp_path / "cjdroute.conf"
    conf.write_text(GENCONF)
    peer = {"password": "a pass phrase", "publicKey": GOOD_KEY, "login": "my login", "peerName": "my peer"}
    ret = single(salt, "cjdns.peers", name=str(conf), peers={"192.0.2.1:1": peer})
    assert ret["result"] is True and ret["changes"] == {"added": ["192.0.2.1:1 (my peer)"]}, ret
    assert salt["cjdns.check_config"](str(conf))["ok"] is True
    assert cj.loads(conf.read_text())["interfaces"]["UDPInterface"][0]["connectTo"]["192.0.2.1:1"] == peer
