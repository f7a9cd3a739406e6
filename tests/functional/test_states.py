"""The state module through Salt's state machinery (state.single, in process): identity,
config and peers, with test mode predicting exactly and failures leaving files untouched."""

import hashlib
import json

import pytest

from support.saltenv import VECTORS, SaltEnv, load_module

cj = load_module()
KEYS = json.loads((VECTORS / "keys.json").read_text())["keys"]
PEER = {"password": "peer-secret-1", "publicKey": KEYS[1]["public_key"], "peerName": "bob"}
PEER6 = {"password": "peer-secret-2", "publicKey": KEYS[2]["public_key"]}


@pytest.fixture(scope="module")
def salt(tmp_path_factory):
    env = SaltEnv(tmp_path_factory.mktemp("states"))
    mods, _ = env.loader()
    return mods


def single(salt, fun, test=False, **kwargs):
    result = salt["state.single"](fun, test=test, **kwargs)
    assert isinstance(result, dict), result
    (ret,) = result.values()
    return ret


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(directory):
    return {p.name: digest(p) for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "cjdns" / "cjdroute.conf"
    path.parent.mkdir(mode=0o700)
    return path


def test_identity_makes_a_config_then_keeps_it(salt, conf):
    predicted = single(salt, "cjdns.identity", test=True, name=str(conf), udp_port=47300)
    assert predicted["result"] is None and not conf.exists()
    assert predicted["changes"] == {"public_key": {"old": None, "new": "<new key, made on apply>"},
                                    "ipv6": {"old": None, "new": "<new key, made on apply>"}}
    made = single(salt, "cjdns.identity", name=str(conf), udp_port=47300)
    assert made["result"] is True and set(made["changes"]) == {"public_key", "ipv6"}
    data = cj.loads(conf.read_text())
    assert cj.public_key(data["privateKey"]) == made["changes"]["public_key"]["new"] == data["publicKey"]
    assert conf.stat().st_mode & 0o777 == 0o600
    assert data["privateKey"] not in json.dumps(made)
    again = single(salt, "cjdns.identity", name=str(conf), udp_port=47300)
    assert again["result"] is True and again["changes"] == {}
    assert single(salt, "cjdns.identity", test=True, name=str(conf))["changes"] == {}


def test_an_own_valid_key_is_kept_and_wrong_informational_fields_fixed(salt, conf):
    text = (VECTORS / "genconf/genconf-1.conf").read_text()
    conf.write_text(text.replace('"ipv6": "fc50', '"ipv6": "fc51'))
    predicted = single(salt, "cjdns.identity", test=True, name=str(conf))
    real = single(salt, "cjdns.identity", name=str(conf))
    assert predicted["changes"] == real["changes"] == {
        "ipv6": {"old": "fc51:cef1:b90f:109a:71de:2331:48d1:fe60", "new": "fc50:cef1:b90f:109a:71de:2331:48d1:fe60"}}
    assert conf.read_text() == text


def test_a_compromised_key_is_replaced_and_reported_by_public_key(salt, conf):
    text = (VECTORS / "genconf/genconf-2.conf").read_text()
    conf.write_text(text)
    old_pub = cj.loads(text)["publicKey"]
    predicted = single(salt, "cjdns.identity", test=True, name=str(conf), compromised_keys=[old_pub])
    assert conf.read_text() == text
    real = single(salt, "cjdns.identity", name=str(conf), compromised_keys=[old_pub])
    assert predicted["changes"]["public_key"]["old"] == real["changes"]["public_key"]["old"] == old_pub
    assert real["changes"]["public_key"]["new"] != old_pub and "compromised" in real["comment"]
    data = cj.loads(conf.read_text())
    assert data["publicKey"] == real["changes"]["public_key"]["new"]
    # Only the three identity lines changed; comments are intact.
    changed = [a for a, b in zip(text.splitlines(), conf.read_text().splitlines()) if a != b]
    assert len(changed) == 3


def test_a_key_listed_as_the_templates_is_replaced(salt, conf, tmp_path):
    text = (VECTORS / "genconf/genconf-3.conf").read_text()
    conf.write_text(text)
    listed = tmp_path / "template-public-keys"
    listed.write_text("# retired\n" + cj.loads(text)["publicKey"] + "\n")
    real = single(salt, "cjdns.identity", name=str(conf), template_keys=str(listed))
    assert real["result"] is True and "template's key" in real["comment"]
    assert cj.loads(conf.read_text())["privateKey"] != cj.loads(text)["privateKey"]


@pytest.mark.parametrize("bad, reason", [
    ('{ "privateKey": "xyz", "version": 2 }', "privateKey: privateKey must be 64 hexadecimal characters"),
    ('{ "privateKey": "%s", "version": 2 }' % KEYS[0]["private_key"][:10], "64 hexadecimal"),
    ('{ "version": 2, }', ":1:15: expected another key after ','"),
    ("", ":1:1: expected '{'"),
    ("\x00\x01garbage", "NUL bytes"),
])
def test_identity_fails_clearly_and_leaves_the_file(salt, conf, bad, reason):
    conf.write_text(bad)
    before = tree(conf.parent)
    ret = single(salt, "cjdns.identity", name=str(conf))
    assert ret["result"] is False and reason in ret["comment"] and ret["changes"] == {}
    assert tree(conf.parent) == before


def test_config_manages_settings_and_hides_secrets(salt, conf):
    conf.write_text((VECTORS / "genconf/genconf-1.conf").read_text())
    settings = {"admin_bind": "127.0.0.1:11234", "admin_password": "", "udp_port": 47300, "beacon": 0,
                "tun_device": "tun0", "log_to": "", "dns_seeds": [],
                "authorized_passwords": {"alice": None, "bob": {"password": "bob-given-pw"}}}
    before = conf.read_text()
    predicted = single(salt, "cjdns.config", test=True, name=str(conf), settings=settings)
    assert conf.read_text() == before
    real = single(salt, "cjdns.config", name=str(conf), settings=settings)
    assert predicted["changes"] == real["changes"]
    assert set(real["changes"]) == {
        "admin.password", "interfaces/UDPInterface/0/bind", "interfaces/UDPInterface/1/bind",
        "interfaces/UDPInterface/0/beacon", "router.interface.tunDevice",
        "authorizedPasswords.alice", "authorizedPasswords.bob"}
    assert real["changes"]["admin.password"] == {"old": "<hidden>", "new": "<hidden>"}
    data = cj.loads(conf.read_text())
    alice = next(e for e in data["authorizedPasswords"] if e.get("user") == "alice")
    for secret in (data["admin"]["password"], alice["password"], "bob-given-pw"):
        assert secret not in json.dumps(real) + json.dumps(predicted)
    assert data["admin"]["password"] != "NONE" and len(data["admin"]["password"]) <= 53
    assert single(salt, "cjdns.config", name=str(conf), settings=settings)["changes"] == {}
    # A named peer dropped from pillar loses its entry; the hand-made default-login stays.
    settings["authorized_passwords"] = {"bob": {"password": "bob-given-pw"}}
    dropped = single(salt, "cjdns.config", name=str(conf), settings=settings)
    assert list(dropped["changes"]) == ["authorizedPasswords.alice"]
    assert [e["user"] for e in cj.loads(conf.read_text())["authorizedPasswords"]] == ["default-login", "bob"]


@pytest.mark.parametrize("settings, reason", [
    ({"udp_port": 70000}, "udp_port: 70000 is not a port number"),
    ({"udp_port": "x"}, "udp_port: 'x' is not a port number"),
    ({"admin_password": "x" * 54}, "admin_password: longer than 53 bytes"),
    ({"admin_password": "é" * 27}, "admin_password: longer than 53 bytes"),
    ({"admin_password": "NONE"}, 'admin_password: "NONE" turns off cjdroute\'s admin authentication'),
    ({"admin_password": 918273645}, "admin_password: must be a string, not int"),
    ({"tun_device": "tun:0"}, "tun_device: 'tun:0' is not a Linux interface name"),
    ({"log_to": "file"}, "log_to: 'file' must be 'stdout' or empty"),
    ({"authorized_passwords": {"carol": {"ipv6": "fe80::1"}}}, "authorized_passwords.carol.ipv6: 'fe80::1' is not a cjdns address"),
    ({"admin_bind": "localhost:11234"}, "admin_bind: 'localhost' is not an IP address"),
    ({"tun_device": "a/b"}, "tun_device: 'a/b' is not a Linux interface name"),
    ({"beacon": 3}, "beacon: 3 must be 0 (off), 1 (listen) or 2"),
    ({"authorized_passwords": {"carol": {"pass": "x"}}}, "authorized_passwords.carol.pass: unknown field"),
    ({"dns_seeds": "seed.example"}, "dns_seeds: must be a list"),
])
def test_bad_settings_fail_with_field_and_reason(salt, conf, settings, reason):
    conf.write_text((VECTORS / "genconf/genconf-1.conf").read_text())
    before = tree(conf.parent)
    ret = single(salt, "cjdns.config", name=str(conf), settings=settings)
    assert ret["result"] is False and reason in ret["comment"], ret["comment"]
    assert tree(conf.parent) == before


def test_peers_merge_prune_and_keep_hand_added(salt, conf):
    hand = (VECTORS / "genconf/genconf-1.conf").read_text().replace(
        "                    // Ask somebody who is already connected.\n",
        "                    // Ask somebody who is already connected.\n"
        "                    // added by hand\n"
        '                    "198.51.100.7:9": { "password": "hand-pw", "publicKey": "%s" }\n' % KEYS[3]["public_key"])
    conf.write_text(hand)
    pillar = {"192.0.2.1:4000": PEER, "[2001:db8::1]:4000": PEER6}
    predicted = single(salt, "cjdns.peers", test=True, name=str(conf), peers=pillar)
    assert conf.read_text() == hand
    real = single(salt, "cjdns.peers", name=str(conf), peers=pillar)
    assert predicted["changes"] == real["changes"] == {"added": ["192.0.2.1:4000 (bob)", "[2001:db8::1]:4000"]}
    assert "peer-secret" not in json.dumps(real)
    assert single(salt, "cjdns.peers", name=str(conf), peers=pillar)["changes"] == {}
    dropped = single(salt, "cjdns.peers", name=str(conf), peers={"192.0.2.1:4000": PEER})
    assert dropped["changes"] == {"removed": ["[2001:db8::1]:4000"]}
    text = conf.read_text()
    assert "// added by hand" in text and "198.51.100.7:9" in cj.loads(text)["interfaces"]["UDPInterface"][0]["connectTo"]


def test_bad_peers_are_all_listed_and_nothing_is_written(salt, conf):
    conf.write_text((VECTORS / "genconf/genconf-1.conf").read_text())
    before = tree(conf.parent)
    ret = single(salt, "cjdns.peers", name=str(conf), peers={
        "host.example:1": PEER, "192.0.2.1:2": {**PEER, "publicKey": "bad"}, "192.0.2.1:3": {**PEER, "extra": 1}})
    assert ret["result"] is False
    for fragment in ("peers.host.example:1: 'host.example' is not an IP address",
                     "peers.192.0.2.1:2.publicKey: too short", "peers.192.0.2.1:3.extra: unknown field"):
        assert fragment in ret["comment"]
    assert "peer-secret" not in ret["comment"]
    assert tree(conf.parent) == before
