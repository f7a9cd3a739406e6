"""cjdns.node on a plain Debian 13 minion (no Qubes pillar) booted under its own systemd, reached
by real salt-ssh (tests/support/node_lab.py). One machine for the module: the refusal runs
first and must leave it untouched; then the dry run, the first apply and the re-apply."""

import hashlib
import json

import pytest

from support.node_lab import NodeLab
from support.qubes_lab import containers_work, wait_for_output
from support.saltenv import changed, load_module, state_results

pytestmark = pytest.mark.skipif(not containers_work(), reason="needs root, systemd-nspawn and debootstrap")
cj = load_module()
CONF = "/etc/cjdns/cjdroute.conf"
# Written by the machine's own apt, systemd, Salt's thin and logs on any salt-ssh run.
NOT_THE_FORMULAS = ("var/cache/", "var/lib/apt/lists/", "var/lib/systemd/", "var/log/", "var/tmp/",
                    "etc/.pwd.lock")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    lab = NodeLab(tmp_path_factory.mktemp("node") / "lab")
    lab.machine.boot()
    yield lab
    lab.cleanup()


def ok(result):
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert isinstance(result.data, dict), result.stdout[-3000:]
    return result


def digest(*roots):
    """Every file and link under the machine's root upper layer and private volume."""
    entries = []
    for root in roots:
        for path in sorted(root.rglob("*")):
            name = str(path.relative_to(root))
            if name.startswith(NOT_THE_FORMULAS):
                continue
            if path.is_symlink():
                entries.append((name, "->" + str(path.readlink())))
            elif path.is_file():
                entries.append((name, hashlib.sha256(path.read_bytes()).hexdigest(), oct(path.stat().st_mode)))
    return entries


def volumes(lab):
    return digest(lab.machine.root_upper, lab.machine.private_dir)


def test_node_sls_refuses_a_qubes_template(node):
    before = volumes(node)
    node.set_pillar({"qubes": {"type": "template"}})
    try:
        result = node.apply("cjdns.node")
    finally:
        node.set_pillar(node.pillar)
    # salt-ssh exits 20 (EX_AGGREGATE) for a minion whose states failed; salt-call would say 2.
    assert result.rc == 20 and [r["result"] for r in state_results(result.data)] == [False]
    assert "runs in a plain minion without Qubes" in json.dumps(result.data)
    assert volumes(node) == before
    assert node.machine.run(["test", "-e", "/etc/cjdns"]).returncode == 1


def test_node_first_apply_second_apply_and_dry_run(node):
    machine = node.machine
    host = machine.testinfra_host()
    assert not host.package("python3-cryptography").is_installed
    assert host.run("systemctl is-system-running").stdout.strip() in ("running", "degraded")
    before = volumes(node)
    dry = ok(node.apply("cjdns.node", "test=True"))
    assert volumes(node) == before
    assert machine.run(["test", "-e", CONF]).returncode == 1
    predicted = {r["__id__"] for r in state_results(dry.data) if r["result"] is None}
    packages = next(r for r in state_results(dry.data) if r["__id__"] == "cjdns-node-packages")
    assert "python3-cryptography" in packages["changes"]

    first = ok(node.apply("cjdns.node"))
    assert not [r for r in state_results(first.data) if r["result"] is False]
    assert predicted == set(changed(first.data))
    assert host.package("python3-cryptography").is_installed
    assert host.run("python3 -c 'import cryptography'").rc == 0
    # Built from the fake upstream's pinned tag, in the machine.
    assert "cjdns-v22.3" in host.run("/usr/bin/cjdroute --version").stdout
    assert host.file(CONF).mode == 0o600
    unit = host.file("/etc/systemd/system/cjdns.service").content_string
    assert "qubes-service" not in unit and "qubes-sysinit" not in unit
    assert host.run("systemctl is-active cjdns").stdout.strip() == "active"
    assert host.run("systemctl is-enabled cjdns").stdout.strip() == "enabled"
    # The machine's own systemd runs cjdroute, under the unit's hardening.
    pid = host.run("systemctl show -p MainPID --value cjdns").stdout.strip()
    assert pid != "0"
    assert "NoNewPrivs:\t1" in host.file(f"/proc/{pid}/status").content_string

    second = ok(node.apply("cjdns.node"))
    assert changed(second.data) == {}
    wait_for_output(machine, ["ip", "-6", "addr", "show", "dev", "tun0"], "inet6 fc")
    status = node.call("cjdns.status")
    assert status.data["admin"]["reachable"] and status.data["address_up"], status.data
    assert status.data["peers"]["total"] == 2
    private_key = cj.loads(machine.path(CONF).read_text())["privateKey"]
    for result in (dry, first, second, status):
        assert private_key not in result.stdout + result.stderr


def test_node_peer_and_password_changes_are_live_under_systemd(node):
    """The SLS wiring under the machine's real systemd: a new peer and a new authorized password
    reach cjdroute through its admin API; the service state does not restart it."""
    machine = node.machine
    host = machine.testinfra_host()
    pid = host.run("systemctl show -p MainPID --value cjdns").stdout.strip()
    peer = {"password": "live-peer-password-3", "publicKey": "qc6hh1gfszsfwvzzcjnxs9j56jfqc3z6pxrq8grl1lr164qhmwg0.k",
            "peerName": "node-c"}
    pillar = json.loads(json.dumps(node.pillar))
    pillar["cjdns"]["node"]["peers"]["192.0.2.30:47300"] = peer
    pillar["cjdns"]["node"]["authorized_passwords"] = {**(pillar["cjdns"]["node"].get("authorized_passwords") or {}),
                                                       "newcomer": {"password": "live-user-password-4"}}
    node.set_pillar(pillar)
    try:
        result = ok(node.apply("cjdns.node"))
    finally:
        node.set_pillar(node.pillar)
    states = {r["__id__"]: r for r in state_results(result.data)}
    assert states["cjdns-node-live"]["changes"] == {"authorizedPasswords": {"added": ["newcomer"]},
                                                    "peers": {"connected": ["192.0.2.30:47300 (node-c)"]}}
    assert states["cjdns-node-restart-needed"]["changes"] == {}
    assert "cjdns-node-running" not in changed(result.data)
    assert host.run("systemctl show -p MainPID --value cjdns").stdout.strip() == pid
    keys = {p["public_key"] for p in node.call("cjdns.peer_stats").data}
    assert peer["publicKey"] in keys
    assert "live-peer-password-3" not in result.stdout + result.stderr
    assert "live-user-password-4" not in result.stdout + result.stderr
