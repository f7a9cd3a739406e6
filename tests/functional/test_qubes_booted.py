"""The Qubes path as real Qubes runs it: a Debian 13 template with what a minimal template has
(no python3-cryptography), booted under its own systemd, reached by salt-ssh with the test venv's
Salt (Qubes' 3007.13 and patches), the formula's modules running on the qube's /usr/bin/python3;
then sys-cjdns booted from that template. One lab for the module: each test builds on the last.

The module's pillar carries known secrets (admin password, an authorized password, peer
passwords) and every apply and call runs at log level debug: the last test is the secret sweep
over everything those runs printed and left behind."""

import hashlib
import ipaddress
import json
import os
from pathlib import Path

import pytest

from support.qubes_lab import Lab, containers_work, wait_for_output
from support.saltenv import VECTORS, changed, load_module, state_results

pytestmark = [pytest.mark.booted,
              pytest.mark.skipif(not containers_work(), reason="needs root, systemd-nspawn and debootstrap")]
cj = load_module()
CONF = "/etc/cjdns/cjdroute.conf"
MANUAL = (VECTORS / "genconf/genconf-1.conf").read_text()
MANUAL_KEY = cj.loads(MANUAL)["privateKey"]
ADMIN = "sweep-admin-password-5f2c9"
ALICE = "sweep-alice-password-81d3e"
PEER_PASSWORDS = ["sweep-peer-password-one", "sweep-peer-password-two"]


def sweep_pillar():
    keys = json.loads((VECTORS / "keys.json").read_text())["keys"]
    return {"cjdns": {"node": {
        "admin_password": ADMIN,
        "authorized_passwords": {"alice": {"password": ALICE}},
        "peers": {"192.0.2.10:47300": {"password": PEER_PASSWORDS[0], "publicKey": keys[1]["public_key"]},
                  "[2001:db8::20]:47300": {"password": PEER_PASSWORDS[1], "publicKey": keys[2]["public_key"]}},
    }}}


class RecordingLab(Lab):
    """A Lab whose applies and calls run at log level debug and are kept for the sweep."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outputs: list[tuple[str, str]] = []

    def apply(self, where, *args, log_level="debug"):
        result = super().apply(where, *args, log_level=log_level)
        if where == "dom0":
            self.outputs.append((f"dom0 state.apply {' '.join(args)}", result.stdout + "\n" + result.stderr))
        return result

    def call(self, where, *args, log_level="debug"):
        result = super().call(where, *args, log_level=log_level)
        self.outputs.append((f"{where} {' '.join(args)}", result.stdout + "\n" + result.stderr))
        return result


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = RecordingLab(tmp_path_factory.mktemp("booted") / "lab", pillar=sweep_pillar())
    lab.pillar["cjdns"]["node"]["peers"] = sweep_pillar()["cjdns"]["node"]["peers"]
    lab.set_pillar({})
    assert lab.apply("dom0", "cjdns.dom0", "test=True").rc == 0
    assert lab.apply("dom0", "cjdns.dom0").rc == 0
    # The manual's step 4: cjdroute --genconf wrote the template's own key to /etc/cjdroute.conf.
    lab.template.sh(f"umask 077 && cat > /etc/cjdroute.conf <<'EOF'\n{MANUAL}EOF")
    lab.template.shutdown()
    yield lab
    lab.cleanup()


def ok(result):
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert isinstance(result.data, dict), result.stdout[-3000:]
    failed = [r for r in state_results(result.data) if r["result"] is False]
    assert not failed, failed
    return result


# What the qube's own machinery writes on any boot or salt-ssh run, whatever the formula does:
# apt's package index (Salt's pkg refreshes it, in test mode too), systemd's and ldconfig's state,
# logs.
NOT_THE_FORMULAS = ("var/cache/", "var/lib/apt/lists/", "var/lib/systemd/", "var/log/", "var/tmp/",
                    "etc/.pwd.lock")


def digest(root):
    """Every file and link under root with its content and mode (an upper layer of the root)."""
    entries = []
    for path in sorted(root.rglob("*")):
        if str(path.relative_to(root)).startswith(NOT_THE_FORMULAS):
            continue
        if path.is_symlink():
            entries.append((str(path.relative_to(root)), "->" + str(path.readlink())))
        elif path.is_file():
            entries.append((str(path.relative_to(root)), hashlib.sha256(path.read_bytes()).hexdigest(),
                            oct(path.stat().st_mode)))
    return entries


def predicted(result):
    return {r["__id__"] for r in state_results(result.data) if r["result"] is None}


def test_1_a_fresh_minimal_template_lacks_cryptography(lab):
    assert lab.template.run(["python3", "-c", "import cryptography"]).returncode != 0
    assert lab.template.run(["python3", "-c", "import sys; print(sys.version_info[:2])"]).stdout.strip() == "(3, 13)"
    assert lab.template.run(["dpkg", "-s", "qubes-core-agent-networking"]).returncode != 0
    lab.template.shutdown()


def test_2_template_dry_run_predicts_installs_and_changes_nothing(lab):
    lab.template.boot()  # up until the end of test_3 (qubesctl would boot it for each run)
    before = digest(lab.template.root_upper)
    dry = ok(lab.apply("template", "cjdns.template", "test=True"))
    assert digest(lab.template.root_upper) == before
    packages = next(r for r in state_results(dry.data) if r["__id__"] == "cjdns-template-packages")
    assert packages["result"] is None
    assert {"python3-cryptography", "qubes-core-agent-networking"} <= set(packages["changes"])
    lab.dry = dry


def test_3_template_apply_installs_removes_the_key_and_gates_the_unit(lab):
    first = ok(lab.apply("template", "cjdns.template"))
    assert predicted(lab.dry) == set(changed(first.data))
    assert MANUAL_KEY not in first.stdout + first.stderr + lab.dry.stdout
    host = lab.template.testinfra_host()
    assert host.package("python3-cryptography").is_installed
    assert host.package("qubes-core-agent-networking").is_installed
    assert host.run("python3 -c 'import cryptography'").rc == 0
    assert not host.file("/etc/cjdroute.conf").exists
    grep = host.run(f"grep -rl {MANUAL_KEY} /etc /var/lib /usr/local /root")
    assert grep.stdout == ""
    unit = host.file("/etc/systemd/system/cjdns.service").content_string.splitlines()
    assert "ConditionPathExists=/run/qubes-service/cjdns" in unit
    assert host.run("systemctl is-enabled cjdns").stdout.strip() == "enabled"
    # systemd itself skipped it: the flag exists only in sys-cjdns.
    assert host.run("systemctl show -p ConditionResult --value cjdns").stdout.strip() in ("no", "")
    assert host.run("systemctl is-active cjdns").stdout.strip() != "active"
    assert host.file("/etc/cjdns").is_directory and not host.file(CONF).exists
    second = ok(lab.apply("template", "cjdns.template"))
    assert changed(second.data) == {}
    lab.template_files = qube_files(lab.template)
    lab.template.shutdown()


def test_4_sys_cjdns_runs_cjdroute_because_of_its_flag_with_its_own_key(lab):
    lab.proxy.boot()
    dry = ok(lab.apply("proxy", "cjdns.proxy", "test=True"))
    first = ok(lab.apply("proxy", "cjdns.proxy"))
    made = changed(first.data)
    assert predicted(dry) == set(made)
    ip6 = made["cjdns-proxy-identity"]["ipv6"]["new"]
    host = lab.proxy.testinfra_host()
    assert host.file("/run/qubes-service/cjdns").exists
    assert host.service("cjdns").is_running
    # Started by the qube's systemd (a cjdroute the unit owns), under the unit's hardening.
    pid = host.run("systemctl show -p MainPID --value cjdns").stdout.strip()
    assert pid != "0"
    assert "NoNewPrivs:\t1" in host.file(f"/proc/{pid}/status").content_string
    conf = cj.loads(lab.proxy.path(CONF).read_text())
    assert conf["privateKey"] != MANUAL_KEY and conf["ipv6"] == ip6
    assert host.file(CONF).mode == 0o600 and host.file("/etc/cjdns").mode == 0o700
    address = ipaddress.ip_address(ip6).compressed
    assert address in wait_for_output(lab.proxy, ["ip", "-6", "addr", "show", "dev", "tun0"], address)
    # qubes-firewall (from qubes-core-agent-networking, installed by the formula) ran the
    # formula's script in the live ruleset.
    assert host.service("qubes-firewall").is_running
    assert "udp dport 47300" in host.run("nft list ruleset").stdout
    assert "blackhole fc00::/8" in host.run("ip -6 route show").stdout
    assert changed(ok(lab.apply("proxy", "cjdns.proxy")).data) == {}
    lab.identity = ip6


def test_5_a_reboot_keeps_key_address_peers_and_brings_rules_and_route_back(lab):
    before = cj.loads(lab.proxy.path(CONF).read_text())
    lab.proxy.reboot()
    host = lab.proxy.testinfra_host()
    after = cj.loads(lab.proxy.path(CONF).read_text())
    assert after["privateKey"] == before["privateKey"] and after["ipv6"] == lab.identity
    assert after["interfaces"] == before["interfaces"]
    address = ipaddress.ip_address(lab.identity).compressed
    assert address in wait_for_output(lab.proxy, ["ip", "-6", "addr", "show", "dev", "tun0"], address)
    assert host.service("cjdns").is_running
    ruleset = host.run("nft list ruleset").stdout
    assert "udp dport 47300" in ruleset and "cjdns" in ruleset
    assert "blackhole fc00::/8" in host.run("ip -6 route show").stdout
    assert changed(ok(lab.apply("proxy", "cjdns.proxy")).data) == {}
    status = lab.call("proxy", "cjdns.status").data
    assert status["ipv6"] == lab.identity and status["admin"]["reachable"]
    assert json.dumps(status).count(after["privateKey"]) == 0


def test_6_sys_cjdns_takes_a_new_peer_and_password_live(lab):
    """cjdns.proxy under sys-cjdns's systemd: a peer and an authorized password added in pillar
    reach the running cjdroute through its admin API; the service is not restarted."""
    # From here on Salt's thin stays in the qube between calls (no `-w`): tests 2-5 and
    # test_readme_qubes.py run as qubes.SaltLinuxVM does; these test the formula, not the
    # transport (and the sweep then also searches what the thin keeps in the qube).
    lab.dispvm.wipe = False
    host = lab.proxy.testinfra_host()
    pid = host.run("systemctl show -p MainPID --value cjdns").stdout.strip()
    key = "qc6hh1gfszsfwvzzcjnxs9j56jfqc3z6pxrq8grl1lr164qhmwg0.k"
    lab.set_pillar({"cjdns": {"node": {
        "peers": {"192.0.2.40:47300": {"password": "booted-live-peer-pw-5", "publicKey": key, "peerName": "node-d"}},
        "authorized_passwords": {"bob": {"password": "booted-live-bob-pw-6"}}}}})
    result = ok(lab.apply("proxy", "cjdns.proxy"))
    states = {r["__id__"]: r for r in state_results(result.data)}
    assert states["cjdns-proxy-live"]["changes"] == {"authorizedPasswords": {"added": ["bob"]},
                                                     "peers": {"connected": ["192.0.2.40:47300 (node-d)"]}}
    assert states["cjdns-proxy-restart-needed"]["changes"] == {}
    assert "cjdns-proxy-running" not in changed(result.data)
    assert host.run("systemctl show -p MainPID --value cjdns").stdout.strip() == pid
    assert key in {p["public_key"] for p in lab.call("proxy", "cjdns.peer_stats").data}
    assert "booted-live-peer-pw-5" not in result.stdout + result.stderr
    assert "booted-live-bob-pw-6" not in result.stdout + result.stderr
    assert changed(ok(lab.apply("proxy", "cjdns.proxy")).data) == {}


def test_7_drift_is_predicted_and_repaired_and_cjdroute_waits_for_the_firewall(lab):
    host = lab.proxy.testinfra_host()
    # The drift: the key world-readable, the mesh drop flushed, the blackhole route deleted.
    lab.proxy.sh(f"chmod 644 {CONF} && chmod 755 /etc/cjdns && nft flush chain ip6 qubes cjdns-forward"
                 " && ip -6 route del blackhole fc00::/8 metric 500")
    drifted = lab.proxy.sh("nft -s list ruleset; ip -6 route show; stat -c %a /etc/cjdns /etc/cjdns/*").stdout
    dry = ok(lab.apply("proxy", "cjdns.proxy", "test=True"))
    assert lab.proxy.sh("nft -s list ruleset; ip -6 route show; stat -c %a /etc/cjdns /etc/cjdns/*").stdout == drifted
    assert changed(dry.data) == {
        "cjdns-proxy-confdir-protected": {"/etc/cjdns": {"mode": {"old": "0755", "new": "0700"}},
                                          CONF: {"mode": {"old": "0644", "new": "0600"}}},
        "cjdns-proxy-firewall-loaded": {"missing": ["chain ip6 qubes cjdns-forward: its rules differ from the formula's",
                                                    "route blackhole fc00::/8 metric 500: missing"]}}
    real = ok(lab.apply("proxy", "cjdns.proxy"))
    assert changed(real.data) == changed(dry.data)
    assert host.file(CONF).mode == 0o600 and host.file("/etc/cjdns").mode == 0o700
    assert 'oifname != "tun0"' in host.run("nft list chain ip6 qubes cjdns-forward").stdout
    assert "blackhole fc00::/8" in host.run("ip -6 route show").stdout
    assert changed(ok(lab.apply("proxy", "cjdns.proxy")).data) == {}
    # Fail closed: without Qubes' tables the rules cannot load, and a stopped cjdroute stays
    # stopped (the service requires the firewall state; a failed load fails on every apply:
    # tests/functional/test_firewall_sls.py).
    lab.proxy.sh("systemctl stop cjdns && nft delete table ip6 qubes")
    failed = lab.apply("proxy", "cjdns.proxy")
    results = {r["__id__"]: r for r in state_results(failed.data)}
    assert results["cjdns-proxy-firewall-loaded"]["result"] is False
    assert "table ip6 qubes: missing" in results["cjdns-proxy-firewall-loaded"]["comment"]
    assert results["cjdns-proxy-running"]["result"] is False
    assert "requisite" in results["cjdns-proxy-running"]["comment"]
    assert host.run("systemctl is-active cjdns").stdout.strip() != "active"
    # Qubes' tables back as at boot (what qubes-iptables loads): the next apply loads the
    # rules, then starts cjdroute.
    lab.proxy.sh("nft flush ruleset && nft -f /usr/lib/qubes/qubes-nft.conf")
    back = lab.apply("proxy", "cjdns.proxy")
    # If systemd fails the start job, its own account of why is in the failure message.
    journal = lab.proxy.run(["journalctl", "-u", "cjdns", "-n", "30", "--no-pager"]).stdout
    assert back.rc == 0, back.stdout[-3000:] + journal
    assert {"cjdns-proxy-firewall-loaded", "cjdns-proxy-running"} <= set(changed(back.data))
    assert host.service("cjdns").is_running


# The sweep. Searched in each qube (as the running qube sees them, tmpfs included).
QUBE_DIRS = ("/var", "/tmp", "/root", "/rw")
# Where secrets are by design: the node's config in sys-cjdns's /rw. Not searched either: Debian's
# packages and the local apt repository (big, and nothing of ours).
BY_DESIGN = ("/rw/bind-dirs/etc/cjdns/cjdroute.conf",)
NOT_OURS = ("/var/lib/qubes-emulation/", "/var/cache/apt/", "/var/lib/apt/lists/", "/var/lib/dpkg/",
            "/var/cache/debconf/")


def qube_files(qube):
    """(label, text) of every file under QUBE_DIRS in the running qube, and of its journal."""
    found = []
    root = qube.path("/")
    for top in QUBE_DIRS:
        for dirpath, _dirs, files in os.walk(root / top.lstrip("/")):
            for name in files:
                path = Path(dirpath) / name
                inside = "/" + str(path.relative_to(root))
                if inside in BY_DESIGN or inside.startswith(NOT_OURS) or not path.is_file() or path.is_symlink():
                    continue
                found.append((f"{qube.name}:{inside}", path.read_bytes().decode("utf-8", "replace")))
    journal = qube.run(["journalctl", "--no-pager", "-o", "verbose"])
    found.append((f"{qube.name}: journal", journal.stdout))
    return found


def host_files(top):
    found = []
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                found.append((str(path), path.read_bytes().decode("utf-8", "replace")))
    return found


def test_9_no_secret_appears_in_output_returns_logs_or_cache(lab):
    """Every run of this module at log level debug (dom0, the template, sys-cjdns), then every
    execution function in sys-cjdns, searched with the secrets of pillar and both private keys
    sys-cjdns had: what Salt printed and returned, its logs and caches (dom0's Salt, the
    management DispVM's salt-ssh: master cache and logs), and what stays in the qubes. The
    calls here (and since test_6) keep Salt's thin in the qube between calls (no `-w`), so its
    minion cache there (running_data) is searched too."""
    lab.dispvm.wipe = False
    first_key = cj.loads(lab.proxy.path(CONF).read_text())["privateKey"]
    public = cj.identity_of(first_key).public_key
    calls = [("cjdns.address", public), ("cjdns.check_config",), ("cjdns.identity",), ("cjdns.peers",),
             ("cjdns.status",), ("cjdns.peer_stats",), ("cjdns.ping",), ("cjdns.health",),
             ("state.apply", "cjdns.proxy", "test=True"), ("cjdns.regenerate_identity",)]
    for call in calls:
        lab.call("proxy", *call)
    # credentials shows the requested peer's password on purpose (it is what the user hands
    # that peer); it must still show no private key and no admin password.
    jobs = lab.dispvm.root / "cache" / "jobs"
    earlier_jobs = {label for label, _ in host_files(jobs)}
    credentials = lab.call("proxy", "cjdns.credentials", "alice")
    # salt-ssh's master job cache keeps each return, so this one holds alice's password too.
    credentials_jobs = {label for label, _ in host_files(jobs)} - earlier_jobs
    assert ALICE in credentials.stdout
    lab.outputs.pop()

    final = cj.loads(lab.proxy.path(CONF).read_text())["privateKey"]
    assert final != first_key  # regenerate_identity did
    secrets = {"template's private key": MANUAL_KEY, "first private key": first_key,
               "regenerated private key": final, "admin password": ADMIN, "alice's password": ALICE,
               "bob's password (added live)": "booted-live-bob-pw-6",
               "peer password added live": "booted-live-peer-pw-5",
               **{f"peer password {i}": p for i, p in enumerate(PEER_PASSWORDS)}}
    places = list(lab.outputs)
    places.append(("cjdns.credentials alice (private key and admin password only)", credentials.stdout + credentials.stderr))
    # Salt's logs and caches: dom0's salt-call, the management DispVM's salt-ssh (its
    # rendered pillar is not searched: the pillar holds the secrets by definition).
    for top in (lab.dom0.root, lab.dispvm.root):
        places += host_files(top)
    places += lab.template_files + qube_files(lab.proxy)
    assert any("/var/log/salt" in label or "/log/" in label for label, _ in places)
    assert any("running_data" in label for label, _ in places)  # the thin's minion cache in the qube
    leaks = []
    for label, text in places:
        for name, secret in secrets.items():
            if name == "alice's password" and (label.startswith("cjdns.credentials") or label in credentials_jobs):
                continue
            if secret in text:
                leaks.append(f"{name} in {label}")
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
    assert len(places) > 20
    # Files holding secrets: 0600 in a 0700 directory.
    stored = lab.proxy.private_dir / "bind-dirs/etc/cjdns"
    assert stored.stat().st_mode & 0o777 == 0o700
    for path in stored.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
