"""CJDNS_FAKE_PEERING=udp with fake cjdroute processes, as the fleet lab runs them: on loopback, and
in two network namespaces joined by a veth pair with the formula's own bind layout (0.0.0.0:port and
[::]:port). tests/emulation/fake_service.py starts them as the unit would (the environment passes
through); what they show is read with the formula's module, once through salt-call."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from support.saltenv import TESTS, VECTORS, SaltEnv, load_module

cj = load_module()
KEYS = json.loads((VECTORS / "keys.json").read_text())["keys"]
SERVICE = TESTS / "emulation" / "fake_service.py"
CJDROUTE = TESTS / "emulation" / "fake_cjdroute.py"
ADMIN_PASSWORD = "admin-pw-peering-fn-8j4k"
ALICE = {"user": "alice", "password": "alice-pw-5t7y9u"}
BOB = {"user": "bob", "password": "bob-pw-3w1q0p"}
ENV = {"CJDNS_FAKE_PEERING": "udp", "CJDNS_FAKE_NO_TUN": "1"}
STATS = ("import json, sys; sys.path.insert(0, sys.argv[1]); from support.saltenv import load_module; "
         "print(json.dumps(load_module().peer_stats(sys.argv[2])))")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_config(path, index, port, binds=None, users=(), peers=None):
    """The formula's fresh config for key `index` (admin on 127.0.0.1), UDP on `port`."""
    text = cj.new_config(cj.identity_of(KEYS[index]["private_key"]), port,
                         f"127.0.0.1:{free_udp_port()}", ADMIN_PASSWORD, "tun0")
    for if_num, bind in enumerate(binds or ()):
        text = cj.set_path(text, ("interfaces", "UDPInterface", if_num, "bind"), bind)
    text = cj.set_path(text, ("authorizedPasswords",), [dict(user) for user in users])
    if peers:
        text = cj.merge_peers(text, peers).text
    path.write_text(text)
    return path


def service(action, conf, prefix=()):
    subprocess.run([*prefix, sys.executable, str(SERVICE), action, str(conf), str(conf) + ".pid"],
                   check=True, env={**os.environ, **ENV}, timeout=60)


def wait_for(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.1)


def by_key(stats):
    return {peer["public_key"]: peer for peer in stats}


def test_three_processes_on_loopback_peer_by_their_passwords(tmp_path):
    ports = [free_udp_port() for _ in range(3)]
    b = node_config(tmp_path / "b.conf", 1, ports[1], binds=[f"127.0.0.1:{ports[1]}", f"[::1]:{ports[1]}"],
                    users=[ALICE, BOB])
    a = node_config(tmp_path / "a.conf", 0, ports[0], binds=[f"127.0.0.1:{ports[0]}", f"[::1]:{ports[0]}"],
                    peers={f"127.0.0.1:{ports[1]}": {**ALICE, "login": "alice", "publicKey": KEYS[1]["public_key"]}})
    c = node_config(tmp_path / "c.conf", 2, ports[2], binds=[f"127.0.0.1:{ports[2]}", f"[::1]:{ports[2]}"],
                    peers={f"[::1]:{ports[1]}": {"password": "not-bobs-pw-1", "login": "bob",
                                                 "publicKey": KEYS[1]["public_key"], "peerName": "b"}})
    started = []
    try:
        for conf in (b, a, c):
            service("start", conf)
            started.append(conf)
        a_sees = lambda: by_key(cj.peer_stats(str(a))).get(KEYS[1]["public_key"], {}).get("state")  # noqa: E731
        assert wait_for(lambda: a_sees() == "ESTABLISHED")
        time.sleep(1.0)  # c has sent hellos too
        result = SaltEnv(tmp_path / "salt").call("cjdns.peer_stats", str(b))
        assert result.rc == 0, result.stderr
        seen = by_key(result.data)
        assert set(seen) == {KEYS[0]["public_key"]}
        incoming = seen[KEYS[0]["public_key"]]
        assert (incoming["state"], incoming["user"], incoming["incoming"], incoming["lladdr"]) == \
            ("ESTABLISHED", "alice", True, f"127.0.0.1:{ports[0]}")
        refused = by_key(cj.peer_stats(str(c)))[KEYS[1]["public_key"]]
        assert (refused["state"], refused["version"], refused["bytes_in"]) == ("INIT", 0, 0)
        # Live: b takes c's password for bob as well (a second entry, as v20.7 adds it), and c gets
        # in without a restart of either node.
        client = cj._admin_client(cj.loads(b.read_text()), str(b), 2.0)
        assert client.call("AuthorizedPasswords_add", {"user": "bob", "password": "not-bobs-pw-1"}) == {"error": "none"}
        assert wait_for(lambda: by_key(cj.peer_stats(str(b))).get(KEYS[2]["public_key"], {}).get("user") == "bob")
        assert wait_for(lambda: by_key(cj.peer_stats(str(c)))[KEYS[1]["public_key"]]["state"] == "ESTABLISHED")
    finally:
        for conf in started:
            service("stop", conf)


def test_an_unknown_mode_stops_the_process(tmp_path):
    conf = node_config(tmp_path / "a.conf", 0, free_udp_port())
    with conf.open() as stdin:
        proc = subprocess.run([sys.executable, str(CJDROUTE), "--nobg"], stdin=stdin, capture_output=True,
                              text=True, timeout=60, env={**os.environ, **ENV, "CJDNS_FAKE_PEERING": "yes"})
    assert proc.returncode == 1
    assert "CJDNS_FAKE_PEERING: unknown mode 'yes' (known: udp)" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root for network namespaces")
def test_nodes_in_two_network_namespaces_peer_over_ipv4_and_ipv6(tmp_path):
    """a and c in one namespace, b in the other; a peers over IPv4, c over IPv6; the link going
    down leaves a's peer UNRESPONSIVE."""
    tag = f"cjpe{os.getpid() % 100000}"
    left, right = f"{tag}l", f"{tag}r"
    port = 5511  # every node binds the same port, each in its own namespace or on its own address
    b = node_config(tmp_path / "b.conf", 1, port, users=[ALICE, {**BOB, "ipv6": KEYS[2]["ipv6"]}])
    a = node_config(tmp_path / "a.conf", 0, port, binds=[f"10.231.0.1:{port}", f"[fd31::1]:{port}"],
                    peers={f"10.231.0.2:{port}": {**ALICE, "login": "alice", "publicKey": KEYS[1]["public_key"]}})
    c = node_config(tmp_path / "c.conf", 2, port + 1,
                    peers={f"[fd31::2]:{port}": {"password": BOB["password"], "publicKey": KEYS[1]["public_key"]}})
    ip = lambda *argv: subprocess.run(["ip", *argv], check=True, capture_output=True)  # noqa: E731
    inside = {left: ["ip", "netns", "exec", left], right: ["ip", "netns", "exec", right]}
    started = []

    def stats(ns, conf):
        out = subprocess.run([*inside[ns], sys.executable, "-c", STATS, str(TESTS), str(conf)],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return by_key(json.loads(out))

    ip("netns", "add", left)
    try:
        ip("netns", "add", right)
        ip("link", "add", f"{tag}a", "netns", left, "type", "veth", "peer", "name", f"{tag}b", "netns", right)
        for ns, dev, v4, v6 in ((left, f"{tag}a", "10.231.0.1/24", "fd31::1/64"), (right, f"{tag}b", "10.231.0.2/24", "fd31::2/64")):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", v4, "dev", dev)
            ip("-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad")
            ip("-n", ns, "link", "set", dev, "up")
        for ns, conf in ((right, b), (left, a), (left, c)):
            service("start", conf, prefix=inside[ns])
            started.append(conf)
        assert wait_for(lambda: len([p for p in stats(right, b).values() if p["state"] == "ESTABLISHED"]) == 2, 8)
        seen = stats(right, b)
        assert (seen[KEYS[0]["public_key"]]["user"], seen[KEYS[0]["public_key"]]["lladdr"]) == ("alice", f"10.231.0.1:{port}")
        assert (seen[KEYS[2]["public_key"]]["user"], seen[KEYS[2]["public_key"]]["lladdr"]) == ("bob", f"[fd31::1]:{port + 1}")
        assert stats(left, a)[KEYS[1]["public_key"]]["state"] == "ESTABLISHED"
        assert stats(left, c)[KEYS[1]["public_key"]]["state"] == "ESTABLISHED"
        ip("-n", left, "link", "set", f"{tag}a", "down")
        assert wait_for(lambda: stats(left, a)[KEYS[1]["public_key"]]["state"] == "UNRESPONSIVE", 8)
    finally:
        for conf in started:
            service("stop", conf)
        subprocess.run(["ip", "netns", "del", left], check=False)
        subprocess.run(["ip", "netns", "del", right], check=False)
