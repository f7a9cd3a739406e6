"""Faults: a writer killed at random points, two applies at once, cjdroute slow or absent."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from support.saltenv import REPO, TESTS, VECTORS, SaltEnv, load_module

sys.path.insert(0, str(TESTS / "emulation"))
import admin_server  # noqa: E402

cj = load_module()
GENCONF = (VECTORS / "genconf/genconf-1.conf").read_text()
KEYS = json.loads((VECTORS / "keys.json").read_text())["keys"]

WRITER = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("cj", sys.argv[1])
cj = importlib.util.module_from_spec(spec); sys.modules["cj"] = cj; spec.loader.exec_module(cj)
path, texts = sys.argv[2], [open(p).read() for p in sys.argv[3:]]
print("ready", flush=True)
i = 0
while True:
    cj.write_config(path, texts[i % len(texts)])
    i += 1
"""


def test_a_writer_killed_at_random_points_never_leaves_a_broken_config(tmp_path):
    peers = {f"192.0.2.{i}:{1000 + i}": {"password": f"pw{i}", "publicKey": KEYS[i % 48]["public_key"]} for i in range(1, 120)}
    texts = [GENCONF, cj.merge_peers(GENCONF, peers).text]
    sources = []
    for index, text in enumerate(texts):
        source = tmp_path / f"text{index}"
        source.write_text(text)
        sources.append(str(source))
    conf = tmp_path / "cjdns" / "cjdroute.conf"
    conf.parent.mkdir()
    conf.write_text(texts[0])
    rng = random.Random(20261125)
    for _ in range(100):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(REPO / "_modules/cjdns.py"), str(conf), *sources],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.02))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        content = conf.read_text()
        assert content in texts
        assert cj.parse(content).strict
    # Temporary files of killed writers may remain (as after a power cut); never a broken config.
    leftovers = [p.name for p in conf.parent.iterdir() if p.name != "cjdroute.conf"]
    assert all(name.startswith(".cjdroute.conf.") and name.endswith(".tmp") for name in leftovers)


def test_two_applies_at_once_serialize_and_both_changes_land(tmp_path):
    conf = tmp_path / "cjdns" / "cjdroute.conf"
    conf.parent.mkdir()
    conf.write_text(GENCONF)
    envs = [SaltEnv(tmp_path / f"salt{i}") for i in range(2)]  # two runs, separate cache dirs
    peers = {f"192.0.2.{i}:4000": {"password": f"pw{i}", "publicKey": KEYS[i]["public_key"]} for i in range(1, 40)}
    calls = [("cjdns.peers", f"peers={json.dumps(peers)}"),
             ("cjdns.config", 'settings={"udp_port": 4567, "tun_device": "tun7"}')]
    results = [None, None]

    def apply(index):
        fun, arg = calls[index]
        results[index] = envs[index].call("state.single", fun, str(conf), arg)

    for _ in range(3):
        conf.write_text(GENCONF)
        threads = [threading.Thread(target=apply, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for result in results:
            (ret,) = result.data.values()
            assert ret["result"] is True, ret["comment"]
        data = cj.loads(conf.read_text())
        assert set(data["interfaces"]["UDPInterface"][0]["connectTo"]) == set(peers)
        assert data["interfaces"]["UDPInterface"][0]["bind"] == "0.0.0.0:4567"
        assert data["router"]["interface"]["tunDevice"] == "tun7"


def test_the_lock_makes_the_second_writer_wait(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text(GENCONF)
    order = []

    def hold():
        with cj.locked(str(conf)):
            order.append("first-in")
            time.sleep(0.4)
            order.append("first-out")

    thread = threading.Thread(target=hold)
    thread.start()
    time.sleep(0.1)
    with cj.locked(str(conf), timeout=5):
        order.append("second-in")
    thread.join()
    assert order == ["first-in", "first-out", "second-in"]


@pytest.fixture
def env(tmp_path):
    return SaltEnv(tmp_path / "salt")


def node(tmp_path, port, password="pw-fault-tests"):
    text = cj.set_path(GENCONF, ("admin", "bind"), f"127.0.0.1:{port}")
    conf = tmp_path / "c.conf"
    conf.write_text(cj.set_path(text, ("admin", "password"), password))
    return str(conf)


@pytest.mark.parametrize("fun", ["cjdns.status", "cjdns.health", "cjdns.peer_stats", "cjdns.ping"])
def test_a_slow_cjdroute_is_reported_within_the_timeout(env, tmp_path, fun):
    # The router would answer after 120 s: a call that returns long before gave up on its own
    # timeout. (The bound is loose: salt-call alone takes seconds on a loaded machine.)
    server = admin_server.AdminServer("pw-fault-tests", faults=admin_server.Faults(delay=120.0))
    with server:
        started = time.monotonic()
        result = env.call(fun, node(tmp_path, server.port), "timeout=0.5")
        elapsed = time.monotonic() - started
    assert elapsed < 60, f"{fun} took {elapsed:.1f} s"
    text = result.stdout + result.stderr
    assert "0.5" in text and "127.0.0.1" in text, text


def test_healthy_state_fails_clearly_when_cjdroute_is_not_running(env, tmp_path):
    result = env.call("state.single", "cjdns.healthy", node(tmp_path, 9), "timeout=0.5")
    (ret,) = result.data.values()
    assert result.rc == 2 and ret["result"] is False
    assert "the admin API does not answer" in ret["comment"] and "not up on any interface" in ret["comment"]
