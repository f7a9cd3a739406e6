"""Fleet mode end to end: a real salt-master with the cjdns_fleet ext_pillar and the formula's
reactor, and real salt-minion daemons, each in its own booted Debian 13 machine and network
namespace (tests/support/fleet_lab.py), whose emulated cjdroute peers over real UDP between the
namespaces (tests/emulation/peering.py: an edge is ESTABLISHED only if the server accepts the
client's credentials). The tests run in order on one lab: the lab itself (test_0_*), mesh, the
secret sweep, pillar isolation, hubs, a join brought along by the reactor, removal, rotation, a
compromised key, bad fleet files."""

import copy
import hashlib
import ipaddress
import itertools
import json
import os
import pathlib
import subprocess
import time

import pytest
import yaml

from support.fleet_compiler import load_compiler
from support.fleet_lab import NS_PREFIX, SUBNET, FleetLab, Network, udp_exchange
from support.qubes_lab import containers_work
from support.saltenv import load_module

pytestmark = [pytest.mark.booted,
              pytest.mark.skipif(not containers_work(), reason="needs root, systemd-nspawn and debootstrap")]

compiler = load_compiler()
cj = load_module()
CONF = "/etc/cjdns/cjdroute.conf"
FIRST = ["n1", "n2", "n3", "n4"]
FLEET = "lab"
# How long the reactor may take to bring a joining member's neighbours along: from the end of
# the new member's only apply to its edge ESTABLISHED on both ends (measured: see the note
# printed by test_5).
JOIN_BOUND = 150.0
CONVERGE = 240.0


def fleet_file(members, topology, **extra):
    return {"version": 1, "fleet": FLEET, "epoch": 0, "members": {m: {} for m in members},
            "topology": topology, **extra}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = FleetLab(tmp_path_factory.mktemp("fleet") / "lab", minions=FIRST, ext_pillar=True, reactor=True)
    # Only fleet edges: pillar.example's example peers and alice out.
    pillar = copy.deepcopy(lab.pillar)
    pillar["cjdns"]["node"].update(peers={}, authorized_passwords={})
    lab.set_pillar(pillar)
    lab.write_fleet(fleet_file(FIRST, [{"mesh": FIRST}]))
    try:
        lab.start()
        yield lab
    finally:
        lab.cleanup()


def wait_for(check, what, timeout=CONVERGE, interval=2.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last is True:
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {last}")


def apply(lab, names, **kwargs):
    """state.apply cjdns.node on names (queued behind the reactor's runs) -> {minion: states}."""
    results = lab.apply(",".join(names), "cjdns.node", tgt_type="list", queue=True, **kwargs)
    assert set(results) == set(names), results
    return results


def failures(results):
    return {m: [r["comment"] for r in states.values() if r["result"] is False] if isinstance(states, dict) else states
            for m, states in results.items()
            if not isinstance(states, dict) or any(r["result"] is False for r in states.values())}


def changes(results):
    return {m: {r["__id__"]: r["changes"] for r in states.values() if r["changes"]} for m, states in results.items()}


def keys(lab, names):
    return {m: ident["public_key"] for m, ident in lab.salt(",".join(names), "cjdns.identity", tgt_type="list").items()}


def edges_up(lab, edges, names):
    """True when every (client, server) edge is ESTABLISHED on both ends and no other pair of
    names is; else what is missing or extra."""
    public = keys(lab, names)
    owner = {key: name for name, key in public.items()}
    stats = lab.salt(",".join(names), "cjdns.peer_stats", tgt_type="list", check=False)
    seen = set()
    for name in names:
        if not isinstance(stats.get(name), list):
            return f"{name}: {stats.get(name)}"
        for peer in stats[name]:
            if peer["state"] == "ESTABLISHED" and peer["public_key"] in owner:
                other = owner[peer["public_key"]]
                seen.add((name, other, peer["incoming"]))
    wanted = {(c, s, False) for c, s in edges} | {(s, c, True) for c, s in edges}
    if seen == wanted:
        return True
    shown = {name: [(owner.get(p["public_key"], p["public_key"][:8]), p["state"], p["incoming"], p["lladdr"])
                    for p in stats[name]] for name in names}
    return {"missing": sorted(wanted - seen), "extra": sorted(seen - wanted), "peer_stats": shown}


def settle(lab, names):
    """No state run going on any member (the reactor's orchestrations have finished)."""
    def idle():
        running = lab.salt(",".join(names), "saltutil.running", tgt_type="list", check=False)
        return True if all(r == [] for r in running.values()) else running
    wait_for(idle, "the members to be idle", timeout=180)
    time.sleep(3)
    wait_for(idle, "the members to stay idle", timeout=180)


def converged(lab, names, edges, what):
    wait_for(lambda: edges_up(lab, edges, names), what)
    settle(lab, names)
    again = apply(lab, names)
    assert failures(again) == {} and changes(again) == {n: {} for n in names}, changes(again)


def conf_of(lab, name):
    return lab.machine(name).path(CONF).read_text()


# -- the lab itself: what the fleet tests rely on ------------------------------------------


def test_0_master_accepted_every_minion_and_each_answers_from_its_own_machine(lab):
    keys = lab.keys()
    assert sorted(keys["minions"]) == FIRST and keys["minions_pre"] == [] and keys["minions_rejected"] == []
    assert lab.salt("*", "test.ping") == {name: True for name in FIRST}
    assert lab.salt("*", "network.ipaddrs") == {name: [lab.address(name)] for name in FIRST}
    for name in FIRST:
        machine = lab.machine(name)
        # The daemon is a service of the machine's own systemd, on the host's Python 3.11.
        assert machine.run(["systemctl", "is-active", "salt-minion"]).stdout.strip() == "active"
        pid = machine.run(["systemctl", "show", "-p", "MainPID", "--value", "salt-minion"]).stdout.strip()
        assert "salt-minion" in machine.path(f"/proc/{pid}/cmdline").read_text()
        assert machine.run(["/usr/bin/python3", "--version"]).stdout.startswith("Python 3.13")
        # The host's venv and Python are lent read-only: no minion can change them.
        for lent in (lab.host_python.site_packages / "salt", lab.host_python.stdlib):
            denied = machine.run(["touch", f"{lent}/fleet-lab-write-probe"])
            assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    versions = lab.salt("*", "grains.item", "pythonversion", "osrelease")
    assert {v["osrelease"] for v in versions.values()} == {"13"}
    assert {tuple(v["pythonversion"][:2]) for v in versions.values()} == {(3, 11)}
    assert "[DEBUG   ]" in lab.master_log.read_text()
    for name in FIRST:
        assert f"Minion of '{lab.master_address}'" in lab.minion_log(name).read_text()
        assert (lab.minion_cachedir(name) / "extmods" / "modules" / "cjdns.py").exists()


def test_0_the_bridge_is_in_the_masters_namespace_not_the_hosts(lab):
    subnet = ipaddress.ip_network(f"{lab.master_address}/24", strict=False)
    assert str(subnet).startswith(f"{SUBNET}.")
    host = subprocess.run(["ip", "-4", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    assert not [a for a in json.loads(host) for i in a.get("addr_info", [])
                if ipaddress.ip_address(i["local"]) in subnet]
    bridge = subprocess.run(["ip", "netns", "exec", lab.network.master_ns, "ip", "-4", "-j", "addr", "show", "br0"],
                            capture_output=True, text=True, check=True).stdout
    assert [i["local"] for i in json.loads(bridge)[0]["addr_info"]] == [lab.master_address]


def test_0_minions_reach_each_other_by_udp_across_their_namespaces(lab):
    for sender, receiver in (("n1", "n2"), ("n4", "n3")):
        seen = udp_exchange(lab.machine(sender), lab.machine(receiver), lab.address(receiver),
                            payload=f"{sender}->{receiver}")
        assert seen == {"received": f"{sender}->{receiver}", "from": lab.address(sender),
                        "echo": f"{sender}->{receiver}"}


def test_0_master_events_are_seen_with_their_minion(lab):
    with lab.events() as events:
        since = len(events.events)
        assert lab.salt("n4", "test.ping") == {"n4": True}
        ret = events.wait("salt/job/*/ret/n4", since=since, timeout=30)
    assert ret.data["id"] == "n4" and ret.data["return"] is True and ret.data["fun"] == "test.ping"


def test_0_namespaces_of_a_lab_whose_process_is_gone_are_removed():
    dead = int(open("/proc/sys/kernel/pid_max").read())  # no process has this id
    stale = [f"{NS_PREFIX}200-{dead}-m", f"{NS_PREFIX}200-{dead}-1"]
    for name in stale:
        subprocess.run(["ip", "netns", "add", name], check=True)
    network = Network()
    try:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert not [name for name in stale if name in listed]
        assert network.master_ns in listed
    finally:
        network.destroy()
        for name in stale:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    assert network.master_ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


# -- fleet mode ------------------------------------------------------------------------------


def test_1_mesh_converges_with_one_apply(lab):
    first = apply(lab, FIRST)
    assert failures(first) == {}
    # Each member sent its card once; edges wait for the other end's card, and the reactor
    # brings every member's neighbours along as the cards arrive.
    assert all("cjdns-node-card" in c for c in changes(first).values()), changes(first)
    mesh = [(a, b) for a, b in itertools.combinations(FIRST, 2)]  # the smaller id connects
    converged(lab, FIRST, mesh, "the full mesh")
    assert oct(os.stat(lab.fleet_key).st_mode & 0o777) == "0o600"
    for name in FIRST:
        environment = lab.machine(name).run(["systemctl", "show", "-p", "Environment", "--value", "cjdns"]).stdout
        assert "CJDNS_FAKE_PEERING=udp" in environment
    status = lab.salt("*", "cjdns.status")
    assert all(s["admin"]["reachable"] and s["identity_checked"] for s in status.values()), status
    assert len({s["public_key"] for s in status.values()}) == len(FIRST)  # a key of its own each


def node_secrets(lab, names):
    """(what never leaves a node: private keys and admin passwords, the edge passwords)."""
    own, edges = set(), set()
    for name in names:
        data = cj.loads(conf_of(lab, name))
        own |= {data["privateKey"], data["admin"]["password"]}
        edges |= {entry["password"] for entry in data.get("authorizedPasswords", [])}
    return own, edges


def files_under(top, skip=()):
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path) and not any(s in path for s in skip):
                yield path


def test_2_no_secret_in_logs_job_cache_or_mine(lab):
    node_only, edges = node_secrets(lab, FIRST)
    secrets = node_only | edges | {lab.fleet_key.read_bytes().hex()}
    assert len(secrets) >= 3 * len(FIRST)
    places = [str(lab.master_log), *files_under(lab.master_cachedir / "jobs")]
    places += [p for p in files_under(lab.master_cachedir / "minions") if p.endswith("mine.p")]
    for name in FIRST:
        places += [str(lab.minion_log(name)), *files_under(lab.minion_cachedir(name))]
    # The master's minion-data cache keeps each member's pillar (its passwords, as for any
    # pillar): searched for what must never reach the master, private keys and admin passwords.
    pillars = [p for p in files_under(lab.master_cachedir / "minions") if p.endswith("data.p")]
    def found(path, wanted):
        data = pathlib.Path(path).read_bytes()
        return [(path, s[:6]) for s in wanted if s.encode() in data]

    leaks = [leak for path in places for leak in found(path, secrets)]
    leaks += [leak for path in pillars for leak in found(path, node_only)]
    assert len(places) > 10 and pillars
    assert leaks == []


def test_3_each_pillar_holds_only_its_own_edges(lab):
    key = lab.fleet_key.read_bytes()
    pillars = lab.salt(",".join(FIRST), "pillar.items", tgt_type="list")
    edges = list(itertools.combinations(FIRST, 2))
    password = {edge: compiler.derive_password(key, FLEET, edge[1], edge[0], 0, 0) for edge in edges}
    for name, pillar in pillars.items():
        text = json.dumps(pillar)
        for edge, secret in password.items():
            assert (secret in text) == (name in edge), (name, edge)
        assert pillar["cjdns"]["fleet"]["member"] == name and pillar["cjdns"]["fleet"]["pending"] == []


def test_4_hubs_replace_the_mesh(lab):
    lab.write_fleet(fleet_file(FIRST, [{"hubs": {"hubs": ["n1"], "members": FIRST}}]))
    assert failures(apply(lab, FIRST)) == {}
    converged(lab, FIRST, [(n, "n1") for n in FIRST[1:]], "hub and spokes")
    for spoke in FIRST[1:]:
        others = set(FIRST[1:]) - {spoke}
        assert not [o for o in others if f'"{o}"' in conf_of(lab, spoke)]


def test_5_a_join_brings_its_neighbours_along(lab):
    members = [*FIRST, "n5"]
    lab.add_minion("n5")
    lab.write_fleet(fleet_file(members, [{"hubs": {"hubs": ["n1"], "members": members}}]))
    first = apply(lab, ["n5"])
    assert failures(first) == {}
    applied = time.monotonic()
    # Only n5 was applied: the reactor takes its card event to n1, which then accepts it.
    wait_for(lambda: edges_up(lab, [(n, "n1") for n in members[1:]], members), "n5's edge", timeout=JOIN_BOUND)
    took = time.monotonic() - applied
    print(f"\nfleet join: n5 ESTABLISHED with n1 {took:.1f} s after n5's apply")
    (lab.dir / "join-seconds").write_text(f"{took:.1f}\n")
    assert '"n5"' in conf_of(lab, "n1")
    settle(lab, members)
    again = apply(lab, members)
    assert failures(again) == {} and changes(again) == {n: {} for n in members}


def test_6_a_removed_member_disappears_from_its_neighbours(lab):
    members = ["n1", "n2", "n3", "n5"]
    old_key = keys(lab, ["n4"])["n4"]
    lab.write_fleet(fleet_file(members, [{"hubs": {"hubs": ["n1"], "members": members}}]))
    result = apply(lab, members)
    assert failures(result) == {}
    assert "authorizedPasswords.n4" in json.dumps(changes(result)["n1"])
    assert '"n4"' not in conf_of(lab, "n1")
    forgotten = lab.salt_run("cjdns_fleet.forget", "n4")
    assert "cjdns.card" in json.dumps(forgotten)
    wait_for(lambda: not [p for p in lab.salt("n1", "cjdns.peer_stats")["n1"]
                          if p["public_key"] == old_key and p["state"] == "ESTABLISHED"] or "n4 still up",
             "n4's session on n1 to end", timeout=60)
    converged(lab, members, [(n, "n1") for n in members[1:]], "the fleet without n4")


def peer_password_digest(lab, name):
    """sha256 of each connectTo password of name's config, by endpoint (no password shown)."""
    data = cj.loads(conf_of(lab, name))
    found = {}
    for block in data["interfaces"]["UDPInterface"]:
        for endpoint, peer in (block.get("connectTo") or {}).items():
            found[endpoint] = hashlib.sha256(peer["password"].encode()).hexdigest()
    return found


def test_7_epochs_rotate_the_passwords(lab):
    members = ["n1", "n2", "n3", "n5"]
    hubs = [{"hubs": {"hubs": ["n1"], "members": members}}]
    before = {n: peer_password_digest(lab, n) for n in members[1:]}
    lab.write_fleet(fleet_file(members, hubs, edge_epochs=[{"between": ["n2", "n1"], "epoch": 1}]))
    assert failures(apply(lab, members)) == {}
    one = {n: peer_password_digest(lab, n) for n in members[1:]}
    assert one["n2"] != before["n2"] and one["n3"] == before["n3"] and one["n5"] == before["n5"]
    lab.write_fleet({**fleet_file(members, hubs), "epoch": 1})
    assert failures(apply(lab, members)) == {}
    every = {n: peer_password_digest(lab, n) for n in members[1:]}
    assert all(every[n] != one[n] for n in members[1:])
    converged(lab, members, [(n, "n1") for n in members[1:]], "the rotated fleet")


def test_8_a_compromised_key_is_replaced_and_the_fleet_converges(lab):
    members = ["n1", "n2", "n3", "n5"]
    old = keys(lab, ["n3"])["n3"]
    lab.write_fleet({**fleet_file(members, [{"hubs": {"hubs": ["n1"], "members": members}}]), "epoch": 1,
                     "compromised_keys": [old]})
    assert failures(apply(lab, members)) == {}
    new = keys(lab, ["n3"])["n3"]
    assert new != old
    converged(lab, members, [(n, "n1") for n in members[1:]], "n3 with its new key")
    assert old not in conf_of(lab, "n1") and compiler.key_address(old) not in conf_of(lab, "n1")


BAD_FLEETS = [
    ("unknown member", lambda m: fleet_file(m, [{"mesh": [*m, "ghost"]}]), "'ghost'"),
    ("unknown topology", lambda m: fleet_file(m, [{"ring": m}]), "topology[0]"),
    ("hub not a member", lambda m: fleet_file(m, [{"hubs": {"hubs": ["vps9"], "members": m}}]), "'vps9' is not a member"),
    ("cycle of groups", lambda m: {**fleet_file(m, [{"mesh": "a"}]), "groups": {"a": ["b"], "b": ["a"]}}, "groups"),
]


def test_9_bad_fleet_files_fail_naming_the_field_and_change_nothing(lab):
    members = ["n1", "n2", "n3", "n5"]
    good = lab.fleet_file.read_text()
    before = {n: hashlib.sha256(conf_of(lab, n).encode()).hexdigest() for n in members}
    duplicate = good.replace("members:\n", "members:\n  n2: {}\n", 1)
    cases = [(what, yaml.safe_dump(make(members)), field) for what, make, field in BAD_FLEETS]
    cases.append(("duplicate ids", duplicate, "n2"))
    try:
        for what, text, field in cases:
            lab.fleet_file.write_text(text)
            result = apply(lab, members)
            assert set(failures(result)) == set(members), (what, result)
            assert all(field in json.dumps(r) for r in result.values()), (what, result)
            # n4 left the fleet in test_6: a broken fleet file is not its problem.
            assert not lab.salt("n4", "pillar.item", "_errors")["n4"].get("_errors"), what
        lab.fleet_file.write_text(good)
        lab.fleet_key.chmod(0o644)
        result = apply(lab, members)
        assert set(failures(result)) == set(members) and all("key_file" in json.dumps(r) for r in result.values())
    finally:
        lab.fleet_key.chmod(0o600)
        lab.fleet_file.write_text(good)
    assert {n: hashlib.sha256(conf_of(lab, n).encode()).hexdigest() for n in members} == before
    assert changes(apply(lab, members)) == {n: {} for n in members}
