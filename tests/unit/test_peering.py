"""CJDNS_FAKE_PEERING=udp: emulated nodes peer by real datagrams on loopback (tests/emulation/peering.py).

Each node is the fake cjdroute's own admin server and peering engine (fake_cjdroute.make_server, as a
process would build them from its config and environment) running in this process on 127.0.0.1 and
::1, every port chosen by the kernel. What a node shows is read with the formula's module
(cjdns.peer_stats, and its admin client for the live calls), from a config file naming the node's
admin port.
"""

import json
import socket
import sys
import threading
import time

import pytest

from support.saltenv import TESTS, VECTORS, load_module

sys.path.insert(0, str(TESTS / "emulation"))
import admin_server  # noqa: E402
import fake_cjdroute  # noqa: E402
import peering  # noqa: E402

cj = load_module()
KEYS = json.loads((VECTORS / "keys.json").read_text())["keys"]
ADMIN_PASSWORD = "admin-pw-peering-tests-4k2m"
UDP = {"CJDNS_FAKE_PEERING": "udp"}
ALICE = {"user": "alice", "password": "alice-pw-7g3h1k"}
BOB = {"user": "bob", "password": "bob-pw-2x8c5v"}


class Node:
    """One emulated node: config, admin server and peering engine, started."""

    def __init__(self, tmp_path, index, users=(), peers=None, environ=UDP):
        self.public_key = KEYS[index]["public_key"]
        self.ipv6 = KEYS[index]["ipv6"]
        text = cj.new_config(cj.identity_of(KEYS[index]["private_key"]), 0, "127.0.0.1:0", ADMIN_PASSWORD, "tun0")
        text = cj.set_path(text, ("interfaces", "UDPInterface", 0, "bind"), "127.0.0.1:0")
        text = cj.set_path(text, ("interfaces", "UDPInterface", 1, "bind"), "[::1]:0")
        text = cj.set_path(text, ("authorizedPasswords",), [dict(user) for user in users])
        if peers:
            text = cj.merge_peers(text, peers).text
        self.server = fake_cjdroute.make_server(admin_server, cj.loads(text), environ).start()
        self.conf = tmp_path / f"node{index}.conf"
        self.conf.write_text(cj.set_path(text, ("admin", "bind"), f"127.0.0.1:{self.server.port}"))

    @property
    def v4(self):
        return self.server.peering.bound()[0]

    @property
    def v6(self):
        return self.server.peering.bound()[1]

    def stats(self):
        return {peer["public_key"]: peer for peer in cj.peer_stats(str(self.conf))}

    def call(self, function, args=None):
        return cj._admin_client(cj.loads(self.conf.read_text()), str(self.conf), 2.0).call(function, args)

    def shorten_timeouts(self, session_ms=1500, forget_ms=3000):
        self.server.peering.session_timeout_ms = session_ms
        self.server.peering.forget_ms = forget_ms


@pytest.fixture
def nodes(tmp_path):
    started = []

    def make(index, users=(), peers=None, environ=UDP):
        node = Node(tmp_path, index, users, peers, environ)
        started.append(node)
        return node

    yield make
    for node in started:
        node.server.stop()


def peer(remote, password, login=None, name="remote", key=None, family=4):
    """A connectTo entry for `remote`'s v4 (or v6) socket."""
    entry = {"password": password, "publicKey": key or remote.public_key, "peerName": name}
    if login is not None:
        entry["login"] = login
    return {(remote.v4 if family == 4 else remote.v6): entry}


def wait_for(check, timeout=5.0):
    """Poll `check` until it returns something true; that value, or the last one at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.05)


def state(node, key):
    return (node.stats().get(key) or {}).get("state")


def established(node, key):
    return state(node, key) == "ESTABLISHED"


def test_accepted_edges_are_established_on_both_ends_with_the_matched_user(nodes):
    b = nodes(1, users=[ALICE, BOB])
    a = nodes(0, peers=peer(b, ALICE["password"], login="alice", name="b"))
    c = nodes(2, peers=peer(b, BOB["password"], name="b6", family=6))  # no login: any entry
    assert wait_for(lambda: established(a, b.public_key) and established(c, b.public_key))
    assert wait_for(lambda: established(b, a.public_key) and established(b, c.public_key))

    out = a.stats()[b.public_key]
    assert (out["incoming"], out["user"], out["lladdr"], out["version"]) == (False, "b", b.v4, 20)
    assert out["bytes_in"] > 0 and out["bytes_out"] > 0
    seen = b.stats()
    assert (seen[a.public_key]["incoming"], seen[a.public_key]["user"], seen[a.public_key]["lladdr"]) == (True, "alice", a.v4)
    assert (seen[c.public_key]["incoming"], seen[c.public_key]["user"], seen[c.public_key]["lladdr"]) == (True, "bob", c.v6)
    assert seen[a.public_key]["ipv6"] == a.ipv6 and seen[a.public_key]["version"] == 20
    assert c.stats()[b.public_key]["lladdr"] == b.v6
    labels = [p["label"] for p in seen.values()]
    assert len(set(labels)) == 2 and set(labels) <= {"0000.0000.0000.0013", "0000.0000.0000.0015"}


REFUSED = {
    "wrong-password": dict(password="not-alices-pw-0q9w", login="alice"),
    "unknown-login": dict(password=ALICE["password"], login="mallory"),
    "another-users-login": dict(password=ALICE["password"], login="bob"),
    "wrong-key": dict(password=ALICE["password"], login="alice", key=KEYS[5]["public_key"]),
    "ipv6-of-another-key": dict(password="carol-pw-6t4r2e", login="carol"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_credentials_never_establish(nodes, case):
    carol = {"user": "carol", "password": "carol-pw-6t4r2e", "ipv6": KEYS[6]["ipv6"]}
    b = nodes(1, users=[ALICE, BOB, carol])
    credentials = REFUSED[case]
    key = credentials.get("key", b.public_key)
    a = nodes(0, peers=peer(b, name="b", **credentials))
    control = nodes(2, peers=peer(b, BOB["password"], login="bob", name="b"))
    assert wait_for(lambda: established(b, control.public_key))
    time.sleep(1.2)  # a few more rounds of hellos from both clients
    out = a.stats()[key]
    assert out["state"] == "INIT" and out["version"] == 0 and out["bytes_in"] == 0 and out["bytes_out"] > 0
    assert set(b.stats()) == {control.public_key}


def test_an_ipv6_entry_takes_the_key_it_names(nodes):
    tied = {"user": "tied", "password": "tied-pw-1m3n5b", "ipv6": KEYS[0]["ipv6"]}
    b = nodes(1, users=[tied])
    a = nodes(0, peers=peer(b, tied["password"], login="tied"))
    assert wait_for(lambda: established(b, a.public_key))
    assert b.stats()[a.public_key]["user"] == "tied" and established(a, b.public_key)


def test_removing_the_password_drops_the_session_on_both_ends(nodes):
    b = nodes(1, users=[ALICE, BOB])
    a = nodes(0, peers=peer(b, ALICE["password"], login="alice"))
    c = nodes(2, peers=peer(b, BOB["password"], login="bob"))
    for node in (a, b, c):
        node.shorten_timeouts()
    assert wait_for(lambda: established(b, a.public_key) and established(b, c.public_key))
    assert b.call("AuthorizedPasswords_remove", {"user": "alice"}) == {"error": "none"}
    assert wait_for(lambda: state(b, a.public_key) == "UNRESPONSIVE" and state(a, b.public_key) == "UNRESPONSIVE", 3)
    assert wait_for(lambda: a.public_key not in b.stats(), 4)  # forgotten later
    assert a.stats()[b.public_key]["state"] == "UNRESPONSIVE"  # an outgoing peer stays listed
    assert established(b, c.public_key) and established(c, b.public_key)


def test_a_password_added_live_lets_the_waiting_peer_in(nodes):
    b = nodes(1, users=[ALICE])
    a = nodes(0, peers=peer(b, BOB["password"], login="bob"))
    time.sleep(0.8)
    assert state(a, b.public_key) == "INIT" and a.public_key not in b.stats()
    assert b.call("AuthorizedPasswords_add", BOB) == {"error": "none"}
    assert wait_for(lambda: established(a, b.public_key) and established(b, a.public_key), 3)
    assert b.stats()[a.public_key]["user"] == "bob"


def test_begin_connection_establishes_only_if_the_remote_accepts(nodes):
    b = nodes(1, users=[ALICE])
    d = nodes(3, users=[BOB])
    a = nodes(0)
    assert a.stats() == {}
    for remote, login, password in ((b, "alice", ALICE["password"]), (d, "bob", "not-bobs-pw-3e5r")):
        reply = a.call("UDPInterface_beginConnection", {
            "address": remote.v4, "publicKey": remote.public_key, "login": login, "password": password,
            "peerName": f"live-{login}"})
        assert reply == {"error": "none"}
    # What cjdns.live waits for after beginConnection (ESTABLISH_WAIT): here it is reached.
    client = cj._admin_client(cj.loads(a.conf.read_text()), str(a.conf), 2.0)
    assert cj._wait_listed(client, [b.public_key], cj.ESTABLISH_WAIT) == {b.public_key: "ESTABLISHED"}
    assert wait_for(lambda: established(b, a.public_key))
    time.sleep(1.0)
    stats = a.stats()
    assert stats[b.public_key]["user"] == "live-alice" and stats[d.public_key]["state"] == "INIT"
    assert d.stats() == {}
    # A repeated beginConnection replaces the session (new label) and counts the old one as leaked.
    label = stats[b.public_key]["label"]
    a.call("UDPInterface_beginConnection", {"address": b.v4, "publicKey": b.public_key, "login": "alice",
                                            "password": ALICE["password"]})
    assert a.server.leaked_sessions == [b.public_key]
    assert wait_for(lambda: established(a, b.public_key))
    assert a.stats()[b.public_key]["label"] not in (label, stats[d.public_key]["label"])


def test_disconnecting_a_peer_stops_its_hellos(nodes):
    b = nodes(1, users=[ALICE])
    a = nodes(0, peers=peer(b, ALICE["password"], login="alice"))
    b.shorten_timeouts()
    assert wait_for(lambda: established(b, a.public_key))
    assert a.call("InterfaceController_disconnectPeer", {"pubkey": b.public_key}) == {"success": 1}
    assert a.stats() == {}
    assert wait_for(lambda: state(b, a.public_key) == "UNRESPONSIVE", 3)
    assert wait_for(lambda: b.stats() == {}, 4)
    with pytest.raises(cj.AdminCallError, match="no peer found for that key"):
        a.call("InterfaceController_disconnectPeer", {"pubkey": b.public_key})


def test_reset_peering_refuses_a_peer_whose_password_is_gone(nodes):
    b = nodes(1, users=[ALICE, BOB])
    a = nodes(0, peers=peer(b, ALICE["password"], login="alice"))
    c = nodes(2, peers=peer(b, BOB["password"], login="bob"))
    assert wait_for(lambda: established(b, a.public_key) and established(b, c.public_key))
    b.call("AuthorizedPasswords_remove", {"user": "alice"})
    assert b.call("InterfaceController_resetPeering") == {"success": 1}
    assert state(b, a.public_key) == "INIT"  # at once, not only when the session times out
    time.sleep(1.0)
    assert state(b, a.public_key) == "INIT" and established(b, c.public_key)  # c's next hello took


def test_a_remote_that_goes_down_becomes_unresponsive(nodes):
    b = nodes(1, users=[ALICE])
    a = nodes(0, peers=peer(b, ALICE["password"], login="alice"))
    a.shorten_timeouts()
    assert wait_for(lambda: established(a, b.public_key))
    b.server.stop()
    assert wait_for(lambda: state(a, b.public_key) == "UNRESPONSIVE", 3)
    assert a.stats()[b.public_key]["version"] == 20


class Relay:
    """A UDP forwarder between one client and one server that keeps every datagram it passes."""

    def __init__(self, server):
        self.server = peering.sockaddr(server)[1]
        self.outer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.outer.bind(("127.0.0.1", 0))
        self.inner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.inner.bind(("127.0.0.1", 0))
        self.datagrams = []
        self.client = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self):
        return "127.0.0.1:{}".format(self.outer.getsockname()[1])

    def _run(self):
        for sock in (self.outer, self.inner):
            sock.settimeout(0.05)
        while not self._stop.is_set():
            for sock in (self.outer, self.inner):
                try:
                    data, source = sock.recvfrom(65536)
                except socket.timeout:
                    continue
                self.datagrams.append(data)
                if sock is self.outer:
                    self.client = source
                    self.inner.sendto(data, self.server)
                elif self.client is not None:
                    self.outer.sendto(data, self.client)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self.outer.close()
        self.inner.close()


def test_the_hello_never_carries_the_password(nodes):
    b = nodes(1, users=[ALICE])
    relay = Relay(b.v4)
    relayed_from = "127.0.0.1:{}".format(relay.inner.getsockname()[1])
    try:
        a = nodes(0, peers={relay.address: {"password": ALICE["password"], "login": "alice", "publicKey": b.public_key}})
        assert wait_for(lambda: established(a, b.public_key))
        time.sleep(0.6)
    finally:
        relay.close()
    messages = [peering.decode(d) for d in relay.datagrams]
    hellos = [m for m in messages if m is not None and m.kind == "hello"]
    welcomes = [m for m in messages if m is not None and m.kind == "welcome"]
    assert len(hellos) >= 2 and welcomes and len(messages) == len(relay.datagrams)
    assert {(m.key, m.login) for m in hellos} == {(a.public_key, "alice")} and len({m.nonce for m in hellos}) == len(hellos)
    assert {m.key for m in welcomes} == {b.public_key}
    secret = ALICE["password"].encode()
    for datagram in relay.datagrams:
        assert secret not in datagram and secret.hex().encode() not in datagram
    assert b.stats()[a.public_key]["lladdr"] == relayed_from  # the source b saw


def test_without_the_variable_connect_to_peers_are_established_at_once(nodes):
    b = nodes(1, users=[ALICE])
    a = nodes(0, peers={"192.0.2.7:4001": {"password": "x-pw-1", "publicKey": b.public_key}}, environ={})
    assert a.server.peering is None
    assert a.stats()[b.public_key]["state"] == "ESTABLISHED"  # nothing answers at 192.0.2.7


def test_an_unknown_mode_and_a_bind_that_fails_stop_the_node(nodes, tmp_path):
    with pytest.raises(peering.PeeringError, match=r"CJDNS_FAKE_PEERING: unknown mode 'tcp' \(known: udp\)"):
        nodes(0, environ={"CJDNS_FAKE_PEERING": "tcp"})
    b = nodes(1)
    conf = cj.loads(b.conf.read_text())
    conf["interfaces"]["UDPInterface"][0]["bind"] = b.v4  # taken by b
    server = fake_cjdroute.make_server(admin_server, conf, UDP)
    with pytest.raises(peering.PeeringError, match=rf"UDPInterface bind {b.v4}: Address already in use"):
        server.start()
    assert server.peering.bound() == []
