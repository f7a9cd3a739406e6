"""The Qubes path as real Qubes runs it: a Debian 13 template with what a minimal template has
(no python3-cryptography), booted under its own systemd, reached by salt-ssh with the test venv's
Salt (Qubes' 3007.13 and patches), the formula's modules running on the qube's /usr/bin/python3;
then sys-cjdns booted from that template. One lab for the module: each test builds on the last."""

import hashlib
import ipaddress
import json

import pytest

from support.qubes_lab import Lab, containers_work, wait_for_output
from support.saltenv import VECTORS, changed, load_module, state_results

pytestmark = [pytest.mark.booted,
              pytest.mark.skipif(not containers_work(), reason="needs root, systemd-nspawn and debootstrap")]
cj = load_module()
CONF = "/etc/cjdns/cjdroute.conf"
MANUAL = (VECTORS / "genconf/genconf-1.conf").read_text()
MANUAL_KEY = cj.loads(MANUAL)["privateKey"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("booted") / "lab")
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


def test_4_sys_cjdns_runs_cjdroute_because_of_its_flag_with_its_own_key(lab):
    lab.proxy.boot()
    first = ok(lab.apply("proxy", "cjdns.proxy"))
    made = changed(first.data)
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
