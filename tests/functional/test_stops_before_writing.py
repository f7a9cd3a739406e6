"""Issue 12, part B, through real Salt (salt-call --local): a bad pillar value stops the run
before anything changes (README "Pillar"), a secret of the wrong type is named by its field and
type but never appears in output, the debug log or Salt's cache (in a node run and in dom0's
check), and a connectTo emptied by hand is repaired, reported and predicted.

The node's states come from cjdns/libnode.jinja, as cjdns.node and cjdns.proxy use them, in an
SLS of the test's own whose paths are under tmp_path (nothing outside it is touched)."""

import hashlib
import json
import sys

import pytest
import yaml

from support.saltenv import REPO, TESTS, VECTORS, SaltEnv, changed, load_module, state_results

sys.path.insert(0, str(TESTS / "emulation" / "qubes"))
import qubes_db  # noqa: E402

cj = load_module()
KEYS = json.loads((VECTORS / "keys.json").read_text())["keys"]
GENCONF = (VECTORS / "genconf/genconf-1.conf").read_text()

# The node's identity, settings and peers states, after the pillar check, as cjdns.node has them.
NODE_SLS = """{%- set tplroot = "cjdns" %}
{%- from "cjdns/map.jinja" import cjdns with context %}
{%- from "cjdns/libnode.jinja" import identity_state, config_states, protected_state %}
include:
  - cjdns.pillar
{{ protected_state(cjdns, "t") }}
{{ identity_state(cjdns, "t", false) }}
{{ config_states(cjdns, "t") }}
"""


def node_env(tmp_path, node: dict) -> tuple[SaltEnv, object]:
    confdir = tmp_path / "etc-cjdns"
    confdir.mkdir(mode=0o700)
    pillar = {"cjdns": {"paths": {"confdir": str(confdir), "config": str(confdir / "cjdroute.conf")}, "node": node}}
    env = SaltEnv(tmp_path / "salt", pillar=pillar, minion_id="node1")
    (env.base / "formula" / "nodetest.sls").write_text(NODE_SLS)
    return env, confdir


def digest(directory) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def peer(password="pw", key=1):
    return {"password": password, "publicKey": KEYS[key]["public_key"]}


# -- a bad value stops the run before anything changes -------------------------------------

BAD_NODE_VALUES = [
    ({"tun_device": "tun:0"}, "cjdns.node.tun_device: 'tun:0' is not a Linux interface name"),
    ({"blackhole_metric": 10}, "cjdns.node.blackhole_metric: 10 must be 257-4294967295"),
    ({"admin_password": "NONE"}, "cjdns.node.admin_password: \"NONE\" turns off"),
    ({"authorized_passwords": {"alice": {"ipv6": "2001:db8::1"}}}, "cjdns.node.authorized_passwords.alice.ipv6:"),
    ({"peers": {"0.0.0.0:5": peer()}}, "cjdns.node.peers.0.0.0.0:5: 0.0.0.0 is the unspecified address"),
    ({"udp_port": 7, "peers": {"192.0.2.9:0080": peer(), "192.0.2.9:80": peer()}}, "the same peer as"),
]


@pytest.mark.parametrize("node, reason", BAD_NODE_VALUES, ids=[r.split(":")[0].split(".")[-1] for _, r in BAD_NODE_VALUES])
def test_a_bad_value_stops_the_run_before_anything_changes(tmp_path, node, reason):
    """README "Pillar": "A bad value stops the run before anything changes"."""
    env, confdir = node_env(tmp_path, {"udp_port": 47301, **node})
    conf = confdir / "cjdroute.conf"
    conf.write_text(GENCONF)
    conf.chmod(0o600)
    before = digest(confdir)
    for args in (("test=True",), ()):
        result = env.call("state.apply", "nodetest", *args)
        assert result.rc != 0
        states = {r["__id__"]: r for r in state_results(result.data)}
        check = states["cjdns-pillar-valid"]
        assert check["result"] is False and reason in check["comment"], check["comment"]
        for sid in ("t-identity", "t-config", "t-peers"):
            assert states[sid]["result"] is False and "requisite" in states[sid]["comment"].lower(), states[sid]
            assert states[sid]["changes"] == {}
        assert digest(confdir) == before


def test_the_same_node_with_good_values_is_written(tmp_path):
    """The control for the test above: the same SLS with a good pillar writes, once."""
    env, confdir = node_env(tmp_path, {"udp_port": 47301, "tun_device": "tun7", "peers": {"192.0.2.9:0080": peer()}})
    (confdir / "cjdroute.conf").write_text(GENCONF)
    first = env.call("state.apply", "nodetest")
    assert first.rc == 0, first.stdout[-3000:]
    data = cj.loads((confdir / "cjdroute.conf").read_text())
    assert data["router"]["interface"]["tunDevice"] == "tun7"
    assert list(data["interfaces"]["UDPInterface"][0]["connectTo"]) == ["192.0.2.9:0080"]
    second = env.call("state.apply", "nodetest")
    assert second.rc == 0 and changed(second.data) == {}


# -- secrets of the wrong type -------------------------------------------------------------

# A distinct secret in every secret field, each of a wrong type: scalars, then containers
# (a list or mapping holding the secret where a string or mapping belongs).
SCALAR_SECRETS = {"node": {
    "admin_password": 918273645,
    "authorized_passwords": {"alice": {"password": 5550001234}, "bob": {"password": 12.5e-3}},
    "peers": {"192.0.2.10:1": {"password": 7770004321, "publicKey": KEYS[1]["public_key"]}},
}}
CONTAINER_SECRETS = {"node": {
    "admin_password": ["admin-secret-in-a-list-5b1e"],
    "authorized_passwords": ["authorized-secret-in-a-list-9c3a"],
    "peers": [{"password": "peer-secret-in-a-list-2d7f"}],
}}
SECRETS = {"scalar": (SCALAR_SECRETS, ["918273645", "5550001234", "0.0125", "7770004321"]),
           "container": (CONTAINER_SECRETS, ["admin-secret-in-a-list-5b1e", "authorized-secret-in-a-list-9c3a",
                                             "peer-secret-in-a-list-2d7f"])}
FIELDS = {"scalar": ["cjdns.node.admin_password: an integer (value not shown) must be a string",
                     "cjdns.node.authorized_passwords.alice.password: must be a string, not int",
                     "cjdns.node.authorized_passwords.bob.password: must be a string, not float",
                     "cjdns.node.peers.192.0.2.10:1.password: must be a string, not int"],
          "container": ["cjdns.node.admin_password: a list (value not shown) must be a string",
                        "cjdns.node.authorized_passwords: a list (value not shown) must be a mapping",
                        "cjdns.node.peers: a list (value not shown) must be a mapping"]}


def everything_salt_kept(env: SaltEnv) -> list[tuple[str, str]]:
    """Every file under the minion's root (log, cache: sls.p, job cache, proc) but the pillar."""
    found = []
    for path in sorted(env.root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found.append((str(path.relative_to(env.root)), path.read_bytes().decode("utf-8", "replace")))
    return found


def dom0_env(tmp_path, pillar: dict) -> SaltEnv:
    db = tmp_path / "qubes.json"
    qubes_db.new_db(str(db), version="4.2", installed=("debian-13-minimal",))
    return SaltEnv(tmp_path / "dom0", pillar=pillar, minion_id="dom0", extra_module_dirs=[TESTS / "emulation" / "qubes"],
                   opts={"qvm_emulation_db": str(db), "qvm_emulation_version": "4.2"})


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_a_secret_of_the_wrong_type_is_named_never_shown(tmp_path, kind):
    override, secrets = SECRETS[kind]
    env, confdir = node_env(tmp_path, override["node"])
    (confdir / "cjdroute.conf").write_text(GENCONF)
    dom0 = dom0_env(tmp_path, {"cjdns": override})
    places = []
    for label, salt, args in (("pillar check", env, ("state.apply", "cjdns.pillar")),
                              ("node states", env, ("state.apply", "nodetest")),
                              ("node states, dry run", env, ("state.apply", "nodetest", "test=True")),
                              ("dom0", dom0, ("state.apply", "cjdns.dom0"))):
        result = salt.call(*args, log_level="debug")
        assert result.rc != 0
        comment = next(r["comment"] for r in state_results(result.data) if r["__id__"] == "cjdns-pillar-valid")
        for field in FIELDS[kind]:
            assert field in comment, (label, field, comment)
        places += [(f"{label}: stdout", result.stdout), (f"{label}: stderr", result.stderr)]
    for salt in (env, dom0):
        assert salt.log_file.is_file() and "[DEBUG" in salt.log_file.read_text()
        kept = everything_salt_kept(salt)
        assert any(name.endswith("sls.p") for name, _ in kept), [n for n, _ in kept]
        places += kept
    leaks = [f"{secret} in {label}" for label, text in places for secret in secrets if secret in text]
    assert not leaks, leaks
    assert (confdir / "cjdroute.conf").read_text() == GENCONF


# -- drift: a connectTo emptied by hand -----------------------------------------------------

def test_a_connect_to_emptied_by_hand_is_refilled_reported_and_predicted(tmp_path):
    peers = {"192.0.2.20:4000": peer("first pw", 1), "[2001:DB8::20]:04000": peer("second pw", 2)}
    env, confdir = node_env(tmp_path, {"udp_port": 47301, "peers": peers})
    conf = confdir / "cjdroute.conf"
    conf.write_text(GENCONF)
    assert env.call("state.apply", "nodetest").rc == 0
    applied = conf.read_text()
    emptied = cj.set_path(applied, ("interfaces", "UDPInterface", 0, "connectTo"), [])
    conf.write_text(emptied)
    check = env.call("cjdns.check_config", str(conf))
    assert check.rc == 0 and any("connectTo: is an empty list, not an object" in w for w in check.data["warnings"])
    dry = env.call("state.apply", "nodetest", "test=True")
    assert dry.rc == 0 and conf.read_text() == emptied
    assert changed(dry.data) == {"t-peers": {"added": ["192.0.2.20:4000"]}}
    real = env.call("state.apply", "nodetest")
    assert real.rc == 0 and changed(real.data) == changed(dry.data)
    assert cj.loads(conf.read_text()) == cj.loads(applied)
    again = env.call("state.apply", "nodetest")
    assert again.rc == 0 and changed(again.data) == {}
    # The IPv6 peer was written as pillar spells it; a hand-made respelling is the same peer.
    respelled = conf.read_text().replace("[2001:DB8::20]:04000", "[2001:db8::20]:4000")
    conf.write_text(respelled)
    assert changed(env.call("state.apply", "nodetest").data) == {} and conf.read_text() == respelled
