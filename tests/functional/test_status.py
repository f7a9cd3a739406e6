"""cjdns.peer_stats, ping, status and health against the emulated cjdroute admin API."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from support.saltenv import TESTS, VECTORS, SaltEnv, load_module

sys.path.insert(0, str(TESTS / "emulation"))
import admin_server  # noqa: E402

cj = load_module()
GENCONF = (VECTORS / "genconf/genconf-1.conf").read_text()
PASSWORD = "admin-pw-for-tests-123"


def node_config(path, port, password=PASSWORD, peers=None):
    text = cj.set_path(GENCONF, ("admin", "bind"), f"127.0.0.1:{port}")
    text = cj.set_path(text, ("admin", "password"), password)
    if peers:
        text = cj.merge_peers(text, peers).text
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return SaltEnv(tmp_path_factory.mktemp("status"))


@pytest.fixture
def router():
    ident = cj.identity_of(cj.loads(GENCONF)["privateKey"])
    server = admin_server.AdminServer(PASSWORD, public_key=ident.public_key, ipv6=ident.ipv6,
                                      peers=admin_server.synthetic_peers(20, seed=7))
    with server:
        yield server


def test_peer_stats_pages_through_every_peer(env, router, tmp_path):
    conf = node_config(tmp_path / "c.conf", router.port)
    result = env.call("cjdns.peer_stats", str(conf))
    assert result.rc == 0, result.stderr
    assert len(result.data) == 20
    keys = {p["addr"].split(".", 5)[-1] for p in router.peers}
    assert {p["public_key"] for p in result.data} == keys
    first = result.data[0]
    assert set(first) >= {"public_key", "ipv6", "state", "bytes_in", "bytes_out", "lost_packets", "user", "incoming", "lladdr"}
    assert first["ipv6"] == cj.address(first["public_key"])
    pages = [r for r in router.requests if b"InterfaceController_peerStats" in r]
    assert len(pages) == 4  # 6 a page: 0..3
    assert PASSWORD not in result.stdout + result.stderr


def test_status_up(env, router, tmp_path):
    peers = {"192.0.2.1:1": {"password": "x-pw", "publicKey": json.loads((VECTORS / "keys.json").read_text())["keys"][0]["public_key"]}}
    conf = node_config(tmp_path / "c.conf", router.port, peers=peers)
    result = env.call("cjdns.status", str(conf))
    assert result.rc == 0
    status = result.data
    assert status["admin"]["reachable"] is True and status["admin"]["node_ipv6"] == status["ipv6"]
    assert status["peers"]["established"] == 20 and status["peers_configured"] == 1
    assert status["address_up"] is False  # no TUN device here
    health = env.call("cjdns.health", str(conf))
    assert health.data["healthy"] is False
    assert health.data["problems"] == [f"the node's address {status['ipv6']} is not up on any interface (expected on the TUN device)"]


def test_router_down_is_reported_quickly(env, tmp_path):
    conf = node_config(tmp_path / "c.conf", 1)  # nothing listens on port 1
    started = time.monotonic()
    status = env.call("cjdns.status", str(conf), "timeout=0.5")
    assert status.rc == 0 and status.data["admin"]["reachable"] is False
    assert "127.0.0.1:1" in status.data["admin"]["error"]
    ping = env.call("cjdns.ping", str(conf), "timeout=0.5")
    assert ping.rc == 1 and "cjdroute admin API" in ping.stderr
    assert time.monotonic() - started < 8


def test_auth_failure_says_so(env, router, tmp_path):
    conf = node_config(tmp_path / "c.conf", router.port, password="not-the-router-password")
    result = env.call("cjdns.ping", str(conf))
    assert result.rc == 1 and "Auth failed" in result.stderr
    assert "not-the-router-password" not in result.stderr
    assert env.call("cjdns.ping", str(node_config(tmp_path / "d.conf", router.port))).data["reply"] == "pong"


def test_timeout_when_the_router_does_not_answer(env, router, tmp_path):
    router.faults = admin_server.Faults(no_reply=True)
    conf = node_config(tmp_path / "c.conf", router.port)
    started = time.monotonic()
    result = env.call("cjdns.peer_stats", str(conf), "timeout=0.7")
    elapsed = time.monotonic() - started
    # It returns on its own timeout (the router never answers); the bound only catches a hang,
    # loose because salt-call alone takes seconds on a loaded machine.
    assert result.rc == 1 and "0.7" in result.stderr and elapsed < 60
    health = env.call("cjdns.health", str(conf), "timeout=0.5")
    assert health.data["healthy"] is False and "admin API does not answer" in health.data["problems"][-1]


@pytest.mark.parametrize("fault, words", [
    (admin_server.Faults(garbage=True), "byte"),
    (admin_server.Faults(truncate=True), "truncated"),
    (admin_server.Faults(wrong_txid=True), "txid"),
])
def test_malformed_replies_say_what_was_malformed(env, router, tmp_path, fault, words):
    router.faults = fault
    conf = node_config(tmp_path / "c.conf", router.port)
    result = env.call("cjdns.peer_stats", str(conf), "timeout=0.7")
    assert result.rc == 1 and words in result.stderr, result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root for a network namespace")
def test_health_up_and_the_healthy_state_in_a_namespace_with_a_tun(env, tmp_path):
    """A node whose fc address is on a real TUN device, with the emulated router on the
    namespace's loopback: health is good, and the cjdns.healthy state passes."""
    keys = json.loads((VECTORS / "keys.json").read_text())["keys"]
    ns = f"cjst{os.getpid()}"
    conf = node_config(tmp_path / "c.conf", 11234, peers={"192.0.2.1:1": {"password": "pw-x", "publicKey": keys[3]["public_key"]}})
    conf.write_text(cj.set_path(conf.read_text(), ("router", "interface", "tunDevice"), "tun0"))
    ip6 = cj.identity(str(conf))["ipv6"]
    procs = []
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        inside = ["ip", "netns", "exec", ns]
        tun = subprocess.Popen(inside + [sys.executable, str(TESTS / "emulation/tun_responder.py"), "--name", "tun0",
                                         "--address", ip6], stdout=subprocess.PIPE, text=True)
        procs.append(tun)
        assert "READY" in tun.stdout.readline()
        router = subprocess.Popen(inside + [sys.executable, str(TESTS / "emulation/admin_server.py"), "--config", str(conf)],
                                  stdout=subprocess.PIPE, text=True)
        procs.append(router)
        assert router.stdout.readline().strip() == "11234"
        run = lambda argv: subprocess.run(inside + argv, capture_output=True, text=True, timeout=60)  # noqa: E731
        health = env.call("cjdns.health", str(conf), runner=run)
        assert health.rc == 0 and health.data["healthy"] is True, health.stdout + health.stderr
        assert health.data["status"]["address_on"] == ["tun0"]
        assert health.data["status"]["peers"]["established"] == 1
        state = env.call("state.single", "cjdns.healthy", str(conf), runner=run)
        (ret,) = state.data.values()
        assert ret["result"] is True and "is healthy" in ret["comment"]
        strict = env.call("state.single", "cjdns.healthy", str(conf), "min_established=2", runner=run)
        (ret,) = strict.data.values()
        assert strict.rc == 2 and ret["result"] is False and "1 peers ESTABLISHED, at least 2 wanted" in ret["comment"]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=5)
        subprocess.run(["ip", "netns", "del", ns], check=False)
