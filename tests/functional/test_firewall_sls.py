"""cjdns.proxy.firewall against real nftables and routes, in a network namespace made per test:
salt-call --local applies the SLS inside it (`ip netns exec`), over Qubes' own ruleset of a
network-providing qube (tests/emulation/qubes_nft/base.nft). Every apply compares the live
ruleset and the blackhole route with what the formula's script loads: a failed load, a flushed
chain, a moved jump or a deleted route is reported (and predicted by test=True), repaired, and
a load that does not take is result False every time, not once.

Needs root, iproute2 and nftables; skips otherwise. About 20 s."""

import json
import os
import secrets
import shutil
import subprocess

import pytest

from support.saltenv import TESTS, SaltEnv, state_results

BASE_RULESET = TESTS / "emulation" / "qubes_nft" / "base.nft"
LOADED = "cjdns-proxy-firewall-loaded"
EVERYTHING = [
    "chain ip qubes cjdns-input: missing",
    "chain ip6 qubes cjdns-input: missing",
    "chain ip6 qubes cjdns-forward: missing",
    "chain ip qubes custom-input: no jump to cjdns-input",
    "chain ip6 qubes custom-input: no jump to cjdns-input",
    "chain ip6 qubes custom-forward: no jump to cjdns-forward",
    "route blackhole fc00::/8 metric 500: missing",
]


def unavailable():
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` not installed"
    return None


pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")


@pytest.fixture
def netns():
    name = "cjfw" + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def inside(netns, *argv, stdin=None):
    return subprocess.run(["ip", "netns", "exec", netns, *argv], input=stdin, capture_output=True, text=True,
                          check=True, timeout=60).stdout


def qubes_tables(netns):
    """What qubes-antispoof, qubes-iptables and qubes-firewall load in a network-providing qube."""
    inside(netns, "nft", "-f", str(BASE_RULESET))


def live(netns):
    """The namespace's ruleset and IPv6 routes, as they are."""
    return inside(netns, "nft", "-s", "list", "ruleset") + inside(netns, "ip", "-6", "route", "show")


@pytest.fixture
def env(tmp_path):
    pillar = {"qubes": {"type": "app"}, "cjdns": {"paths": {"firewall": str(tmp_path / "qubes-firewall.d/50-cjdns")}}}
    return SaltEnv(tmp_path / "salt", pillar=pillar, minion_id="sys-cjdns")


def apply(env, netns, *args):
    def runner(argv):
        return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=180)
    return env.call("state.apply", "cjdns.proxy.firewall", *args, runner=runner)


def loaded(result):
    assert isinstance(result.data, dict), result.stdout[-3000:] + result.stderr[-3000:]
    return next(r for r in state_results(result.data) if r["__id__"] == LOADED)


def test_rules_and_route_are_loaded_predicted_and_kept(env, netns):
    qubes_tables(netns)
    before = live(netns)
    dry = apply(env, netns, "test=True")
    assert dry.rc == 0 and loaded(dry)["result"] is None
    assert loaded(dry)["changes"] == {"missing": EVERYTHING}
    assert live(netns) == before
    first = apply(env, netns)
    assert first.rc == 0 and loaded(first)["result"] is True
    assert loaded(first)["changes"] == loaded(dry)["changes"]
    ruleset = inside(netns, "nft", "list", "ruleset")
    assert 'iifgroup != 2 iifname != "tun0" udp dport 47300 accept' in ruleset
    assert 'ip6 daddr fc00::/8 oifname != "tun0" counter packets 0 bytes 0 drop' in ruleset
    assert "blackhole fc00::/8 dev lo metric 500" in inside(netns, "ip", "-6", "route", "show")
    second = apply(env, netns)
    assert second.rc == 0 and [r["changes"] for r in state_results(second.data) if r["changes"]] == []


def test_drift_is_reported_predicted_and_repaired(env, netns):
    qubes_tables(netns)
    assert apply(env, netns).rc == 0
    # The drift: the mesh drop flushed, the blackhole route deleted; and an accept put
    # before the jump to the mesh drop, which would let mesh traffic past it.
    inside(netns, "nft", "flush", "chain", "ip6", "qubes", "cjdns-forward")
    inside(netns, "ip", "-6", "route", "del", "blackhole", "fc00::/8", "metric", "500")
    inside(netns, "nft", "insert", "rule", "ip6", "qubes", "custom-forward", "accept")
    drifted = live(netns)
    dry = apply(env, netns, "test=True")
    expected = {"missing": [
        "chain ip6 qubes cjdns-forward: its rules differ from the formula's",
        "chain ip6 qubes custom-forward: the jump to cjdns-forward is not its first rule",
        "route blackhole fc00::/8 metric 500: missing",
    ]}
    assert loaded(dry)["result"] is None and loaded(dry)["changes"] == expected
    assert live(netns) == drifted
    real = apply(env, netns)
    assert real.rc == 0 and loaded(real)["result"] is True and loaded(real)["changes"] == expected
    chain = inside(netns, "nft", "list", "chain", "ip6", "qubes", "custom-forward").split("\n")
    rules = [line.strip() for line in chain if line.startswith("\t\t")]
    assert rules == ["jump cjdns-forward", "accept"]
    assert "blackhole fc00::/8" in inside(netns, "ip", "-6", "route", "show")
    again = apply(env, netns)
    assert again.rc == 0 and loaded(again)["changes"] == {}


def test_a_changed_port_reloads_the_peering_rule(env, netns, tmp_path):
    qubes_tables(netns)
    assert apply(env, netns).rc == 0
    env.set_pillar({"qubes": {"type": "app"}, "cjdns": {"node": {"udp_port": 47400},
                                                         "paths": {"firewall": str(tmp_path / "qubes-firewall.d/50-cjdns")}}})
    dry = apply(env, netns, "test=True")
    assert loaded(dry)["changes"] == {"missing": ["chain ip qubes cjdns-input: its rules differ from the formula's",
                                                  "chain ip6 qubes cjdns-input: its rules differ from the formula's"]}
    real = apply(env, netns)
    assert loaded(real)["changes"] == loaded(dry)["changes"]
    assert "udp dport 47400 accept" in inside(netns, "nft", "list", "chain", "ip6", "qubes", "cjdns-input")
    assert "47300" not in inside(netns, "nft", "list", "ruleset")


def test_a_load_that_fails_is_a_failure_on_every_apply(env, netns):
    # No Qubes tables (qubes-iptables did not run): the script cannot load the rules.
    for _ in range(2):
        result = apply(env, netns)
        ret = loaded(result)
        assert result.rc != 0 and ret["result"] is False
        assert "the live system still lacks: table ip qubes: missing (is qubes-iptables running?)" in ret["comment"]
        assert "no IPv4 table 'ip qubes'" in ret["comment"]  # what the script said
    dry = apply(env, netns, "test=True")
    assert loaded(dry)["result"] is None and "table ip6 qubes: missing (is qubes-iptables running?)" in json.dumps(
        loaded(dry)["changes"])
    # Once Qubes' tables are there, the next apply loads everything.
    qubes_tables(netns)
    fixed = loaded(apply(env, netns))
    assert fixed["result"] is True and fixed["changes"]["missing"] == EVERYTHING[:6]
