"""cjdns.template and cjdns.proxy in the emulated qubes (Debian 13 under their own systemd,
reached by salt-ssh as qubesctl does), beyond what test_qubes_booted.py walks through: the
built template's files, sys-cjdns's dry run and stored config, keys planted in the template,
an own key, peers edited by hand, bad pillar, and an SLS run in the wrong qube.

One lab for the module, its template built once (Lab.use_built_template, cached across runs);
each test that needs a new sys-cjdns empties its private volume, and pillar changes are undone
after each test."""

import copy
import hashlib
import ipaddress
import json
import subprocess

import pytest

from support.qubes_lab import Lab, containers_work, wait_for_output
from support.saltenv import VECTORS, changed, load_module, state_results

pytestmark = pytest.mark.skipif(not containers_work(), reason="needs root, systemd-nspawn and debootstrap")
cj = load_module()
CONF = "/etc/cjdns/cjdroute.conf"
STORED = "bind-dirs/etc/cjdns/cjdroute.conf"  # under sys-cjdns's /rw
TEMPLATE_KEYS = "/var/lib/cjdns-formula/template-public-keys"
KEYS = json.loads((VECTORS / "keys.json").read_text())["keys"]
# salt-ssh (so qubesctl for a qube) exits 20, EX_AGGREGATE, when a target's run failed; the
# states' own retcode 2 is what salt-call --local gives in dom0.
FAILED = 20


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    # wipe=False: Salt's thin stays in the qubes between calls (speed); -w is test_qubes_booted's.
    lab = Lab(tmp_path_factory.mktemp("qubes-sls") / "lab", wipe=False)
    lab.use_built_template()
    lab.base_pillar = copy.deepcopy(lab.pillar)
    yield lab
    lab.cleanup()


@pytest.fixture(autouse=True)
def pillar_restored(lab):
    yield
    if lab.pillar != lab.base_pillar:
        lab.pillar = copy.deepcopy(lab.base_pillar)
        lab.set_pillar({})


def ok(result):
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert isinstance(result.data, dict), result.stdout[-3000:]
    return result


def predicted_ids(result):
    return {r["__id__"] for r in state_results(result.data) if r["result"] is None}


def tree_digest(root):
    entries = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            entries.append((str(path.relative_to(root)), hashlib.sha256(path.read_bytes()).hexdigest(), oct(path.stat().st_mode)))
    return entries


def new_proxy(lab):
    """sys-cjdns as a qube never started: halted, with an empty private volume."""
    lab.proxy.shutdown()
    subprocess.run(["rm", "-rf", "--one-file-system", str(lab.proxy.private_dir)], check=True)
    lab.proxy.private_dir.mkdir()


def applied_proxy(lab):
    """sys-cjdns running with cjdns.proxy applied (done here unless an earlier test did it)."""
    lab.proxy.boot()
    if not (lab.proxy.private_dir / STORED).exists():
        ok(lab.apply("proxy", "cjdns.proxy"))


def plant_template_key(lab, text):
    """The template made a key in its config directory (the built template has the bind-dirs
    entry for it), so a sys-cjdns started now gets a copy in its /rw."""
    lab.template.sh(f"mkdir -p /etc/cjdns && chmod 700 /etc/cjdns && umask 077 && cat > {CONF} <<'EOF'\n{text}EOF")
    lab.template.shutdown()


def test_the_built_template_has_the_gated_unit_the_bind_dirs_entry_and_cjdroute(lab):
    host = lab.template.testinfra_host()
    unit = host.file("/etc/systemd/system/cjdns.service")
    assert unit.mode == 0o644
    for line in ("ConditionPathExists=/run/qubes-service/cjdns", "After=qubes-sysinit.service",
                 "ConditionPathExists=/etc/cjdns/cjdroute.conf", "StandardInput=file:/etc/cjdns/cjdroute.conf",
                 "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SETUID CAP_SETGID CAP_SYS_CHROOT",
                 "NoNewPrivileges=yes", "ProtectSystem=full", "PrivateTmp=yes",
                 "ExecStartPre=-/sbin/ip -6 route replace blackhole fc00::/8 metric 500"):
        assert line in unit.content_string.splitlines(), line
    assert not [l for l in unit.content_string.splitlines() if l.startswith("Exec") and "--genconf" in l]
    drop_in = host.file("/etc/qubes-bind-dirs.d/50-cjdns.conf")
    assert drop_in.mode == 0o644 and "binds+=( '/etc/cjdns' )" in drop_in.content_string
    assert host.file("/etc/cjdns").is_directory and host.file("/etc/cjdns").mode == 0o700
    assert host.file("/usr/bin/cjdroute").mode == 0o755
    assert "cjdns-v22.3" in host.run("/usr/bin/cjdroute --version").stdout
    assert host.run("systemctl is-enabled cjdns").stdout.strip() == "enabled"
    assert host.run("systemctl is-active cjdns").stdout.strip() != "active"  # never runs in the template
    assert host.run("ls -A /etc/cjdns").stdout == ""


def test_proxy_sls_refuses_to_run_in_the_template(lab):
    result = lab.apply("template", "cjdns.proxy")
    assert result.rc == FAILED
    assert state_results(result.data)
    assert all(r["result"] is False and "runs in the Qubes AppVM sys-cjdns" in r["comment"] for r in state_results(result.data))
    assert not (lab.template.root_upper / CONF.lstrip("/")).exists()
    assert lab.template.run(["test", "-e", CONF]).returncode == 1


def test_template_holds_no_key_after_its_sls(lab):
    planted = (VECTORS / "genconf/genconf-1.conf").read_text()
    lab.template.sh(f"mkdir -p /etc/cjdns && umask 077 && cat > {CONF} <<'EOF'\n{planted}EOF\ncp {CONF} /etc/cjdroute.conf")
    result = ok(lab.apply("template", "cjdns.template.no-keys"))
    ret = next(r for r in state_results(result.data) if r["__id__"] == "cjdns-template-no-private-keys")
    pub = cj.loads(planted)["publicKey"]
    assert "removed the template's private key" in ret["comment"] and pub in ret["comment"]
    assert cj.loads(planted)["privateKey"] not in result.stdout + result.stderr
    assert lab.template.run(["test", "-e", CONF]).returncode == 1
    assert lab.template.run(["test", "-e", "/etc/cjdroute.conf"]).returncode == 1
    assert pub in lab.template.run(["cat", TEMPLATE_KEYS]).stdout
    grep = lab.template.run(["grep", "-rl", cj.loads(planted)["privateKey"], "/etc", "/var/lib", "/usr/local", "/rw"])
    assert grep.stdout == ""
    lab.template.shutdown()


def test_proxy_dry_run_predicts_the_apply_which_keeps_the_config_in_rw(lab):
    # (First and second apply, reboot, unit and firewall at run time: test_qubes_booted.py.)
    new_proxy(lab)
    lab.proxy.boot()
    dry = ok(lab.apply("proxy", "cjdns.proxy", "test=True"))
    stored = lab.proxy.private_dir / STORED
    assert not stored.exists()
    identity = next(r for r in state_results(dry.data) if r["__id__"] == "cjdns-proxy-identity")
    assert identity["changes"]["ipv6"] == {"old": None, "new": "<new key, made on apply>"}
    first = ok(lab.apply("proxy", "cjdns.proxy"))
    assert predicted_ids(dry) == set(changed(first.data))
    made = changed(first.data)
    assert set(made["cjdns-proxy-peers"]["added"]) == {"192.0.2.10:47300 (node-a)", "[2001:db8::20]:47300 (node-b)"}
    ip6 = made["cjdns-proxy-identity"]["ipv6"]["new"]
    # The config lives in /rw (bind-dirs of the directory), 0600 in a 0700 directory.
    assert stored.stat().st_mode & 0o777 == 0o600 and stored.parent.stat().st_mode & 0o777 == 0o700
    data = cj.loads(stored.read_text())
    assert data["ipv6"] == ip6 and data["admin"]["password"] != "NONE"
    assert data["interfaces"]["UDPInterface"][0]["bind"] == "0.0.0.0:47300"
    assert data["router"]["interface"]["tunDevice"] == "tun0" and "dnsSeeds" not in data["router"]
    assert cj.loads(lab.proxy.path(CONF).read_text()) == data
    host = lab.proxy.testinfra_host()
    assert host.file(CONF).mode == 0o600
    rules = host.file("/rw/config/qubes-firewall.d/50-cjdns")
    assert rules.mode == 0o755 and "47300" in rules.content_string
    assert host.run("systemctl is-active cjdns").stdout.strip() == "active"
    address = ipaddress.ip_address(ip6).compressed
    assert address in wait_for_output(lab.proxy, ["ip", "-6", "addr", "show", "dev", "tun0"], address)
    assert [l for l in host.run("nft list ruleset").stdout.splitlines() if "udp dport 47300" in l and "accept" in l]
    # Secrets stay out of what Salt printed.
    for secret in (data["privateKey"], data["admin"]["password"], "example-peer-password-1"):
        assert secret not in first.stdout + first.stderr + dry.stdout + dry.stderr


def test_peers_are_merged_and_pruned_keeping_hand_added_ones_and_comments(lab):
    applied_proxy(lab)
    conf = lab.proxy.path(CONF)
    text = conf.read_text()
    hand = cj.edit(text, ("interfaces", "UDPInterface", 0, "connectTo"),
                   {"198.51.100.7:9999": {"password": "hand-pw", "publicKey": KEYS[5]["public_key"]}})
    hand = hand.replace('"198.51.100.7:9999"', '// my friend, added by hand\n                "198.51.100.7:9999"')
    lab.proxy.sh(f"cat > {CONF} <<'EOF'\n{hand}EOF")
    lab.pillar["cjdns"]["node"]["peers"].pop("[2001:db8::20]:47300")
    lab.set_pillar({})
    dry = ok(lab.apply("proxy", "cjdns.proxy.config", "test=True"))
    assert conf.read_text() == hand
    real = ok(lab.apply("proxy", "cjdns.proxy.config"))
    assert changed(dry.data) == changed(real.data) == {"cjdns-proxy-peers": {"removed": ["[2001:db8::20]:47300"]}}
    after = conf.read_text()
    assert "// my friend, added by hand" in after
    connect = cj.loads(after)["interfaces"]["UDPInterface"][0]["connectTo"]
    assert set(connect) == {"192.0.2.10:47300", "198.51.100.7:9999"}
    assert cj.parse(after).strict
    assert (lab.proxy.private_dir / STORED).read_text() == after


@pytest.mark.parametrize("override, reason", [
    ({"node": {"udp_port": 0}}, "cjdns.node.udp_port: 0 is not a port number"),
    ({"node": {"peers": {"host.example:1": {"password": "x", "publicKey": KEYS[0]["public_key"]}}}},
     "cjdns.node.peers.host.example:1: 'host.example' is not an IP address"),
    ({"node": {"udp_prot": 1}}, "cjdns.node.udp_prot: unknown key (did you mean udp_port?)"),
])
def test_bad_pillar_fails_and_leaves_every_file(lab, override, reason):
    applied_proxy(lab)
    before = tree_digest(lab.proxy.private_dir), tree_digest(lab.proxy.volatile / "etc")
    lab.set_pillar({"cjdns": override})
    result = lab.apply("proxy", "cjdns.proxy")
    assert result.rc == FAILED
    check = next(r for r in state_results(result.data) if r["__id__"] == "cjdns-pillar-valid")
    assert check["result"] is False and reason in check["comment"], check["comment"]
    assert not changed(result.data)
    assert (tree_digest(lab.proxy.private_dir), tree_digest(lab.proxy.volatile / "etc")) == before


def test_an_own_valid_key_is_kept(lab):
    own = (VECTORS / "genconf/genconf-seed.conf").read_text()
    new_proxy(lab)
    lab.proxy.boot()
    lab.proxy.sh(f"umask 077 && cat > {CONF} <<'EOF'\n{own}EOF")
    result = ok(lab.apply("proxy", "cjdns.proxy"))
    assert "cjdns-proxy-identity" not in changed(result.data)
    stored = (lab.proxy.private_dir / STORED).read_text()
    assert cj.loads(stored)["privateKey"] == cj.loads(own)["privateKey"]
    # Comments of the generated file survive the managed edits.
    assert "// Private key:" in stored
    assert cj.loads(own)["privateKey"] not in result.stdout + result.stderr


def test_a_key_copied_from_the_template_is_replaced(lab):
    shared = (VECTORS / "genconf/genconf-2.conf").read_text()
    old = cj.loads(shared)
    # The template made a key, then bind-dirs copied it into sys-cjdns's /rw at its first boot.
    plant_template_key(lab, shared)
    new_proxy(lab)
    lab.proxy.boot()
    assert cj.loads(lab.proxy.path(CONF).read_text())["privateKey"] == old["privateKey"]
    assert cj.loads((lab.proxy.private_dir / STORED).read_text())["privateKey"] == old["privateKey"]
    # While sys-cjdns still runs on the old template root, the key lies beneath the bind mount.
    ok(lab.apply("template", "cjdns.template.no-keys"))
    result = ok(lab.apply("proxy", "cjdns.proxy.identity"))
    ret = next(r for r in state_results(result.data) if r["__id__"] == "cjdns-proxy-identity")
    assert ret["changes"]["ipv6"]["old"] == old["ipv6"] and ret["changes"]["ipv6"]["new"] != old["ipv6"]
    assert "template" in ret["comment"]
    assert cj.loads(lab.proxy.path(CONF).read_text())["privateKey"] != old["privateKey"]
    assert old["privateKey"] not in (lab.proxy.private_dir / STORED).read_text()
    assert old["privateKey"] not in result.stdout + result.stderr


def test_a_template_key_is_recognised_after_a_reboot_too(lab):
    shared = (VECTORS / "genconf/genconf-3.conf").read_text()
    plant_template_key(lab, shared)
    new_proxy(lab)
    lab.proxy.boot()
    ok(lab.apply("template", "cjdns.template.no-keys"))
    lab.proxy.reboot()  # now the template's root has no key; its record of public keys remains
    assert cj.loads(lab.proxy.path(CONF).read_text())["privateKey"] == cj.loads(shared)["privateKey"]
    assert lab.template.run(["test", "-e", CONF]).returncode == 1
    lab.template.shutdown()
    result = ok(lab.apply("proxy", "cjdns.proxy.identity"))
    ret = next(r for r in state_results(result.data) if r["__id__"] == "cjdns-proxy-identity")
    assert ret["changes"]["public_key"]["old"] == cj.loads(shared)["publicKey"]
    assert f"listed in {TEMPLATE_KEYS}" in ret["comment"]
    assert cj.loads(lab.proxy.path(CONF).read_text())["publicKey"] != cj.loads(shared)["publicKey"]
