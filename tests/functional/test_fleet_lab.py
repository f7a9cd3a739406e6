"""The fleet lab itself (tests/support/fleet_lab.py): a real salt-master and five real salt-minion
daemons, each minion in its own booted Debian 13 machine and network namespace, joined by a
bridge in the master's namespace. One lab for the module: it answers, applies cjdns.node from
the master (and re-applies with no changes), carries UDP between machines, reports master
events, and takes a sixth minion that joins later."""

import ipaddress
import json
import subprocess

import pytest

from support.fleet_lab import NS_PREFIX, SUBNET, FleetLab, Network, udp_exchange
from support.qubes_lab import containers_work

pytestmark = pytest.mark.skipif(not containers_work(), reason="needs root, systemd-nspawn and debootstrap")
MINIONS = ["n1", "n2", "n3", "n4", "n5"]
CONF = "/etc/cjdns/cjdroute.conf"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    lab = FleetLab(tmp_path_factory.mktemp("fleet") / "lab", minions=MINIONS)
    lab.start()
    yield lab
    lab.cleanup()


def test_master_accepted_every_minion_and_each_answers_from_its_own_machine(fleet):
    keys = fleet.keys()
    assert sorted(keys["minions"]) == MINIONS and keys["minions_pre"] == [] and keys["minions_rejected"] == []
    assert fleet.salt("*", "test.ping") == {name: True for name in MINIONS}
    addresses = fleet.salt("*", "network.ipaddrs")
    assert addresses == {name: [fleet.address(name)] for name in MINIONS}
    assert len(set(fleet.address(n) for n in MINIONS)) == len(MINIONS)
    for name in MINIONS:
        machine = fleet.machine(name)
        # The daemon is a service of the machine's own systemd, on the host's Python 3.11.
        assert machine.run(["systemctl", "is-active", "salt-minion"]).stdout.strip() == "active"
        pid = machine.run(["systemctl", "show", "-p", "MainPID", "--value", "salt-minion"]).stdout.strip()
        assert "salt-minion" in machine.path(f"/proc/{pid}/cmdline").read_text()
        assert machine.run(["/usr/bin/python3", "--version"]).stdout.startswith("Python 3.13")
        # The host's venv and Python are lent read-only: no minion can change them.
        for lent in (fleet.host_python.site_packages / "salt", fleet.host_python.stdlib):
            denied = machine.run(["touch", f"{lent}/fleet-lab-write-probe"])
            assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    versions = fleet.salt("*", "grains.item", "pythonversion", "osrelease")
    assert {v["osrelease"] for v in versions.values()} == {"13"}
    assert {tuple(v["pythonversion"][:2]) for v in versions.values()} == {(3, 11)}
    # Debug logs and caches, where a later check can read them.
    assert "[DEBUG   ]" in fleet.master_log.read_text()
    assert (fleet.master_cachedir / "minions" / "n1" / "data.p").exists()  # minion_data_cache
    for name in MINIONS:
        assert f"Minion of '{fleet.master_address}'" in fleet.minion_log(name).read_text()
        assert (fleet.minion_cachedir(name) / "extmods" / "modules" / "cjdns.py").exists()


def test_the_bridge_is_in_the_masters_namespace_not_the_hosts(fleet):
    subnet = ipaddress.ip_network(f"{fleet.master_address}/24", strict=False)
    assert str(subnet).startswith(f"{SUBNET}.")
    host = subprocess.run(["ip", "-4", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    assert not [a for a in json.loads(host) for i in a.get("addr_info", [])
                if ipaddress.ip_address(i["local"]) in subnet]
    bridge = subprocess.run(["ip", "netns", "exec", fleet.network.master_ns, "ip", "-4", "-j", "addr", "show", "br0"],
                            capture_output=True, text=True, check=True).stdout
    assert [i["local"] for i in json.loads(bridge)[0]["addr_info"]] == [fleet.master_address]


def test_node_apply_from_the_master_then_second_apply_reports_no_changes(fleet):
    first = fleet.apply("*", "cjdns.node")
    assert sorted(first) == MINIONS
    for name, states in first.items():
        assert isinstance(states, dict), f"{name}: {states}"
        failed = {sid: r["comment"] for sid, r in states.items() if r["result"] is not True}
        assert failed == {}, name
        assert any(r["changes"] for r in states.values()), name
    second = fleet.apply("*", "cjdns.node")
    assert sorted(second) == MINIONS
    for name, states in second.items():
        assert isinstance(states, dict), f"{name}: {states}"
        assert all(r["result"] is True for r in states.values()), name
        assert {sid: r["changes"] for sid, r in states.items() if r["changes"]} == {}, name

    for name in MINIONS:
        machine = fleet.machine(name)
        assert machine.run(["systemctl", "is-active", "cjdns"]).stdout.strip() == "active"
        environment = machine.run(["systemctl", "show", "-p", "Environment", "--value", "cjdns"]).stdout
        assert "CJDNS_FAKE_PEERING=udp" in environment
    status = fleet.salt("*", "cjdns.status")
    assert all(s["admin"]["reachable"] and s["identity_checked"] for s in status.values()), status
    assert len({s["public_key"] for s in status.values()}) == len(MINIONS)  # a key of its own each
    assert len({s["ipv6"] for s in status.values()}) == len(MINIONS)


def test_minions_reach_each_other_by_udp_across_their_namespaces(fleet):
    for sender, receiver in (("n1", "n2"), ("n5", "n3")):
        seen = udp_exchange(fleet.machine(sender), fleet.machine(receiver), fleet.address(receiver),
                            payload=f"{sender}->{receiver}")
        assert seen == {"received": f"{sender}->{receiver}", "from": fleet.address(sender),
                        "echo": f"{sender}->{receiver}"}


def test_master_events_are_seen_with_their_minion(fleet):
    with fleet.events() as events:
        since = len(events.events)
        assert fleet.salt("n4", "test.ping") == {"n4": True}
        ret = events.wait("salt/job/*/ret/n4", since=since, timeout=30)
    assert ret.data["id"] == "n4" and ret.data["return"] is True and ret.data["fun"] == "test.ping"


def test_master_restart_with_a_new_config_keeps_its_minions(fleet):
    fleet.master_opts["keep_jobs_seconds"] = 3600
    fleet.restart_master()
    assert "keep_jobs_seconds: 3600" in (fleet.master_conf / "master").read_text()
    assert fleet.salt("*", "test.ping") == {name: True for name in MINIONS}


def test_a_minion_that_joins_later_is_accepted_and_answers(fleet):
    fleet.add_minion("n6")
    assert sorted(fleet.keys()["minions"]) == [*MINIONS, "n6"]
    assert fleet.salt("*", "test.ping") == {name: True for name in [*MINIONS, "n6"]}
    seen = udp_exchange(fleet.machine("n6"), fleet.machine("n1"), fleet.address("n1"))
    assert seen["from"] == fleet.address("n6")


def test_namespaces_of_a_lab_whose_process_is_gone_are_removed():
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
