"""Peers and authorized passwords applied to a running node without a restart (cjdns.live).

salt-call --local applies the node's own states (identity, settings, peers, live, restart
needed) against a fake cjdroute process (tests/emulation/fake_cjdroute.py, whose admin API answers
as the recorded cjdroute v20.7). There is no init system here: tests/emulation/fake_service.py is
what systemd would do, and it runs only when cjdns.restart_needed has changes, as the service
state's `watch` does in cjdns.node and cjdns.proxy.
"""

import hashlib
import json
import os
import socket
import sys
import time

import pytest

from support.saltenv import REPO, TESTS, VECTORS, SaltEnv, changed, load_module, state_results

cj = load_module()
KEYS = [k for k in json.loads((VECTORS / "keys.json").read_text())["keys"]]
ADMIN_PASSWORD = "live-admin-pw-for-tests-0123456789"
SERVICE = TESTS / "emulation" / "fake_service.py"

PEER_A = {"password": "peer-a-pw-9f3k2m", "publicKey": KEYS[0]["public_key"], "peerName": "a"}
PEER_B = {"password": "peer-b-pw-7d1x0q", "publicKey": KEYS[1]["public_key"], "peerName": "b", "login": "me"}
# Remote nodes that peer with ours using the authorized passwords below (incoming).
E = KEYS[2]
F = KEYS[3]
G = KEYS[4]
USERS = {
    "peer-e": {"password": "peer-e-pw-w2n4m6", "ipv6": E["ipv6"]},
    "peer-f": {"password": "peer-f-pw-k8j6h4"},
    "peer-g": {"password": "peer-g-pw-q1r3t5"},
}
SECRETS = [ADMIN_PASSWORD, PEER_A["password"], PEER_B["password"]] + [u["password"] for u in USERS.values()]

SLS = """\
include:
  - cjdns.pillar
{%- set tplroot = "cjdns" %}
{%- from "cjdns/map.jinja" import cjdns with context %}
{%- from "cjdns/libnode.jinja" import identity_state, config_states, live_states, protected_state %}
{{ protected_state(cjdns, "cjdns-node") }}
{{ identity_state(cjdns, "cjdns-node", false) }}
{{ config_states(cjdns, "cjdns-node") }}
{{ live_states(cjdns, "cjdns-node") }}

# What the service state's watch does in cjdns.node: restart only on cjdns.restart_needed.
cjdns-node-running:
  cmd.run:
    - name: {{ service | json }}
    - onchanges:
      - cjdns: cjdns-node-restart-needed
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """A salt-call environment, its config path and the fake cjdroute running from it."""

    def __init__(self, base):
        self.base = base
        self.conf = base / "etc" / "cjdns" / "cjdroute.conf"
        self.pidfile = base / "cjdroute.pid"
        self.leaks = base / "leaks"
        self.faults = base / "faults.json"
        self.incoming = base / "incoming.json"
        self.admin_port = free_udp_port()
        self.env = {"CJDNS_FAKE_NO_TUN": "1", "CJDNS_FAKE_LEAKS": str(self.leaks),
                    "CJDNS_FAKE_FAULTS": str(self.faults), "CJDNS_FAKE_INCOMING": str(self.incoming)}
        self.salt = SaltEnv(base)
        (self.salt.base / "formula" / "livetest.sls").write_text(SLS.replace(
            "{{ service | json }}",
            json.dumps(f"{sys.executable} {SERVICE} restart {self.conf} {self.pidfile}")))
        remotes = [(E, "peer-e"), (F, "peer-f"), (G, "peer-g")]
        self.incoming.write_text(json.dumps([
            {"publicKey": key["public_key"], "lladdr": f"127.0.0.1:{40000 + i}", "login": user,
             "password": USERS[user]["password"]} for i, (key, user) in enumerate(remotes)]))
        self.pillar = {}
        self.set(peers={"192.0.2.10:4001": PEER_A}, users=USERS)

    def set(self, peers=None, users=None, **node):
        self.pillar = {"cjdns": {
            "paths": {"config": str(self.conf), "confdir": str(self.conf.parent)},
            "node": {"admin_bind": f"127.0.0.1:{self.admin_port}", "admin_password": ADMIN_PASSWORD,
                     "udp_port": self.admin_port + 1 if self.admin_port < 65535 else 40001,
                     "peers": peers or {}, "authorized_passwords": users or {}, **node},
        }}
        self.salt.set_pillar(self.pillar)

    def apply(self, *args):
        result = self.salt.call("state.apply", "livetest", *args, env=self.env, timeout=180)
        for secret in SECRETS:
            assert secret not in result.stdout + result.stderr
        assert isinstance(result.data, dict), result.stdout + result.stderr
        return result

    def service(self, action):
        import subprocess

        subprocess.run([sys.executable, str(SERVICE), action, str(self.conf), str(self.pidfile)],
                       check=True, env={**os.environ, **self.env}, timeout=60)

    def client(self):
        return cj._admin_client(cj.loads(self.conf.read_text()), str(self.conf), 2.0)

    def pid(self):
        return self.client().call("Core_pid")["pid"]

    def stats(self):
        return {p["public_key"]: p for p in cj.peer_stats(str(self.conf))}

    def users(self):
        return self.client().call_paged("AuthorizedPasswords_list", list_key="users")

    def leaked(self):
        return self.leaks.read_text().split() if self.leaks.exists() else []


def by_id(result):
    return {r["__id__"]: r for r in state_results(result.data)}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    node = Node(tmp_path_factory.mktemp("live"))
    first = node.apply()
    live = by_id(first)["cjdns-node-live"]
    assert live["result"] is True and "not running" in live["comment"], live
    assert by_id(first)["cjdns-node-restart-needed"]["changes"] == {}
    node.service("start")  # what service.running does after these states
    yield node
    node.service("stop")


def test_second_apply_reports_no_changes_and_keeps_the_node(node):
    pid = node.pid()
    second = node.apply()
    assert changed(second.data) == {}
    assert by_id(second)["cjdns-node-live"]["comment"] == "the running cjdroute matches the config file"
    assert node.pid() == pid
    record = node.conf.parent / cj.LIVE_RECORD
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    assert not any(secret in record.read_text() for secret in SECRETS)


def _growing(node, key):
    """The session of peer `key` is the same and carries traffic: same label, more bytes."""
    before = node.stats()[key]
    time.sleep(0.3)
    after = node.stats()[key]
    return after["label"] == before["label"] and after["bytes_in"] > before["bytes_in"]


def test_adding_a_peer_and_a_password_is_live(node):
    pid = node.pid()
    a_before = node.stats()[PEER_A["publicKey"]]
    users = {**USERS, "newcomer": {"password": "newcomer-pw-5z7y"}}
    node.set(peers={"192.0.2.10:4001": PEER_A, "192.0.2.11:4002": PEER_B}, users=users)
    SECRETS.append("newcomer-pw-5z7y")
    dry_sha = sha(node.conf)
    dry = node.apply("test=True")
    live = by_id(dry)["cjdns-node-live"]
    assert live["result"] is None and "without a restart" in live["comment"]
    assert live["changes"] == {"authorizedPasswords": {"added": ["newcomer"]},
                               "peers": {"connected": ["192.0.2.11:4002 (b)"]}}
    assert by_id(dry)["cjdns-node-restart-needed"]["changes"] == {}
    assert sha(node.conf) == dry_sha and PEER_B["publicKey"] not in node.stats()

    real = node.apply()
    live = by_id(real)["cjdns-node-live"]
    assert live["changes"] == by_id(dry)["cjdns-node-live"]["changes"]
    assert "192.0.2.11:4002 (b) ESTABLISHED" in live["comment"]
    assert "cjdns-node-running" not in changed(real.data)
    assert node.pid() == pid
    assert "newcomer" in node.users()
    stats = node.stats()
    assert stats[PEER_B["publicKey"]]["state"] == "ESTABLISHED"
    a_after = stats[PEER_A["publicKey"]]
    assert a_after["label"] == a_before["label"] and a_after["bytes_in"] > a_before["bytes_in"]
    assert changed(node.apply().data) == {}


def test_changing_a_peer_reconnects_it_without_leaking_a_session(node):
    pid = node.pid()
    changed_b = {**PEER_B, "password": "peer-b-pw-new-3c5v"}
    SECRETS.append(changed_b["password"])
    node.set(peers={"192.0.2.10:4001": PEER_A, "192.0.2.11:4002": changed_b},
             users={**USERS, "newcomer": {"password": "newcomer-pw-5z7y"}})
    result = node.apply()
    live = by_id(result)["cjdns-node-live"]
    assert live["changes"] == {"peers": {"reconnected": ["192.0.2.11:4002 (b)"]}}
    assert node.pid() == pid and node.leaked() == []
    assert node.stats()[PEER_B["publicKey"]]["state"] == "ESTABLISHED"
    assert _growing(node, PEER_A["publicKey"])
    assert changed(node.apply().data) == {}


def test_changing_and_removing_passwords_revokes_them_at_once(node):
    pid = node.pid()
    stats = node.stats()
    assert {E["public_key"], F["public_key"], G["public_key"]} <= set(stats)
    # peer-e (tied to E's address) and peer-f (no address) go; newcomer gets a new password.
    SECRETS.append("newcomer-pw-changed-8b")
    node.set(peers={"192.0.2.10:4001": PEER_A, "192.0.2.11:4002": {**PEER_B, "password": "peer-b-pw-new-3c5v"}},
             users={"peer-g": USERS["peer-g"], "newcomer": {"password": "newcomer-pw-changed-8b"}})
    result = node.apply()
    live = by_id(result)["cjdns-node-live"]
    assert live["changes"]["authorizedPasswords"] == {"changed": ["newcomer"], "removed": ["peer-e", "peer-f"]}
    assert live["changes"]["peers"]["disconnected"] == [f"incoming {E['ipv6']} (127.0.0.1:40000)"]
    assert node.pid() == pid
    users = node.users()
    assert users.count("newcomer") == 1 and "peer-e" not in users and "peer-f" not in users
    stats = node.stats()
    assert E["public_key"] not in stats  # disconnected at once
    # peer-f's session re-authenticated and was refused: no more traffic from it.
    f_before = stats[F["public_key"]]["bytes_in"]
    time.sleep(0.3)
    assert node.stats()[F["public_key"]]["bytes_in"] == f_before
    # The others keep their sessions: same label, counters growing.
    assert _growing(node, G["public_key"]) and _growing(node, PEER_A["publicKey"])
    assert changed(node.apply().data) == {}


def test_removing_a_peer_disconnects_it_live(node):
    pid = node.pid()
    node.set(peers={"192.0.2.10:4001": PEER_A},
             users={"peer-g": USERS["peer-g"], "newcomer": {"password": "newcomer-pw-changed-8b"}})
    result = node.apply()
    assert by_id(result)["cjdns-node-live"]["changes"] == {"peers": {"disconnected": ["192.0.2.11:4002 (b)"]}}
    assert node.pid() == pid and PEER_B["publicKey"] not in node.stats()
    assert _growing(node, PEER_A["publicKey"])
    assert changed(node.apply().data) == {}


def test_an_api_failure_half_way_falls_back_to_a_restart(node):
    pid = node.pid()
    node.faults.write_text(json.dumps({"no_reply": ["UDPInterface_beginConnection"]}))
    node.service("restart")  # the fault is read at start
    assert changed(node.apply().data) == {}  # the restart loaded the file: nothing differs
    pid = node.pid()
    node.faults.unlink()  # the node restarted by the fallback answers normally
    node.set(peers={"192.0.2.10:4001": PEER_A, "192.0.2.11:4002": PEER_B},
             users={"newcomer": {"password": "newcomer-pw-changed-8b"}})
    result = node.apply()
    states = by_id(result)
    live = states["cjdns-node-live"]
    assert live["result"] is True
    # peer-g goes first (revoked: no ipv6 ties it to a key, so incoming G re-authenticates),
    # then beginConnection for b gets no reply.
    assert live["changes"]["live"] == ["authorized password peer-g removed",
                                       f"incoming peer {G['public_key']} re-authenticated"]
    assert "an admin call failed half-way" in live["changes"]["restart"]
    assert "UDPInterface_beginConnection: no reply" in live["changes"]["restart"]
    assert "restarting so the node runs exactly the file" in live["comment"]
    assert states["cjdns-node-restart-needed"]["changes"] == {"restart": live["changes"]["restart"]}
    assert "cjdns-node-running" in changed(result.data)
    assert node.pid() != pid
    assert node.users() == ["newcomer", "Local Peers"]
    assert PEER_B["publicKey"] in node.stats()
    assert changed(node.apply().data) == {}


def test_a_key_change_restarts_and_says_why(node):
    pid = node.pid()
    old_key = cj.loads(node.conf.read_text())["publicKey"]
    node.set(peers={"192.0.2.10:4001": PEER_A, "192.0.2.11:4002": PEER_B},
             users={"newcomer": {"password": "newcomer-pw-changed-8b"}}, compromised_keys=[old_key])
    dry = node.apply("test=True")
    assert by_id(dry)["cjdns-node-live"]["comment"] == "cjdroute would restart: the node's key changed (test mode)"
    assert by_id(dry)["cjdns-node-restart-needed"]["changes"] == {"restart": "the node's key changed"}
    assert node.pid() == pid
    result = node.apply()
    states = by_id(result)
    assert states["cjdns-node-restart-needed"]["changes"] == {"restart": "the node's key changed"}
    assert "cjdns-node-running" in changed(result.data)
    new_pid = node.pid()
    assert new_pid != pid
    assert cj.loads(node.conf.read_text())["publicKey"] != old_key
    assert changed(node.apply().data) == {}
    assert node.pid() == new_pid


def test_a_setting_only_a_restart_applies_restarts(node):
    pid = node.pid()
    node.set(peers={"192.0.2.10:4001": PEER_A, "192.0.2.11:4002": PEER_B},
             users={"newcomer": {"password": "newcomer-pw-changed-8b"}}, dns_seeds=["seed.example.org"])
    result = node.apply()
    reason = by_id(result)["cjdns-node-restart-needed"]["changes"]["restart"]
    assert reason == "router changed (only a restart applies it)"
    assert node.pid() != pid
    assert changed(node.apply().data) == {}


def test_a_stopped_node_gets_nothing_live(node):
    node.service("stop")
    try:
        node.set(peers={"192.0.2.10:4001": PEER_A}, users={"newcomer": {"password": "newcomer-pw-changed-8b"}},
                 dns_seeds=["seed.example.org"])
        result = node.apply()
        live = by_id(result)["cjdns-node-live"]
        assert live["changes"] == {} and "not running" in live["comment"]
        assert "cjdns-node-running" not in changed(result.data)
    finally:
        node.service("start")
    assert changed(node.apply().data) == {}


def test_no_secret_in_the_minion_log(node):
    log = node.salt.log_file.read_text(errors="replace")
    assert "cjdns.live" in log or "cjdns-node-live" in log
    for secret in SECRETS:
        assert secret not in log
