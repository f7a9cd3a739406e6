"""cjdns.template and cjdns.proxy applied for real in emulated qubes (mount namespaces with
Qubes' storage model and bind-dirs), with real Salt."""

import hashlib
import ipaddress
import json

import pytest

from support.saltenv import VECTORS, changed, load_module, state_results
from support.qubes_lab import Lab, namespaces_work, wait_for_output

pytestmark = pytest.mark.skipif(not namespaces_work(), reason="needs root, mount namespaces and overlayfs")
cj = load_module()
CONF = "/etc/cjdns/cjdroute.conf"
KEYS = json.loads((VECTORS / "keys.json").read_text())["keys"]


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path / "lab")
    yield lab
    lab.cleanup()


def ok(result):
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def predicted_ids(result):
    return {r["__id__"] for r in state_results(result.data) if r["result"] is None}


def tree_digest(root):
    entries = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            entries.append((str(path.relative_to(root)), hashlib.sha256(path.read_bytes()).hexdigest(), oct(path.stat().st_mode)))
    return entries


def plant_template_key(lab, text):
    """A template that made a key in its config directory, which bind-dirs keeps per qube."""
    lab.template.sh(f"mkdir -p /etc/cjdns /etc/qubes-bind-dirs.d && chmod 700 /etc/cjdns && "
                    f"echo \"binds+=( '/etc/cjdns' )\" > /etc/qubes-bind-dirs.d/50-cjdns.conf && "
                    f"cat > {CONF} <<'EOF'\n{text}EOF")


def built_template(lab):
    ok(lab.apply("template", "cjdns.template"))
    lab.template.shutdown()
    return lab


def test_template_first_apply_second_apply_and_dry_run(lab):
    dry = ok(lab.apply("template", "cjdns.template", "test=True"))
    assert not (lab.template.root_upper / "usr/bin/cjdroute").exists()
    first = ok(lab.apply("template", "cjdns.template"))
    assert predicted_ids(dry) == set(changed(first.data))
    assert changed(first.data)["cjdns-template-cjdroute-installed"] == {"cjdroute": {"old": None, "new": "cjdns-v22.3"}}
    second = ok(lab.apply("template", "cjdns.template"))
    assert changed(second.data) == {}
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
    assert host.run("systemctl is-enabled cjdns").stdout.strip() == "enabled"
    assert host.run("systemctl is-active cjdns").stdout.strip() != "active"  # never runs in the template
    assert not list((lab.template.root_upper / "etc/cjdns").iterdir())


def test_template_holds_no_key_after_its_sls(lab):
    planted = (VECTORS / "genconf/genconf-1.conf").read_text()
    lab.template.sh(f"mkdir -p /etc/cjdns && cat > {CONF} <<'EOF'\n{planted}EOF\ncp {CONF} /etc/cjdroute.conf")
    result = ok(lab.apply("template", "cjdns.template.no-keys"))
    ret = next(r for r in state_results(result.data) if r["__id__"] == "cjdns-template-no-private-keys")
    pub = cj.loads(planted)["publicKey"]
    assert "removed the template's private key" in ret["comment"] and pub in ret["comment"]
    assert cj.loads(planted)["privateKey"] not in result.stdout + result.stderr
    assert lab.template.run(["test", "-e", CONF]).returncode == 1
    assert lab.template.run(["test", "-e", "/etc/cjdroute.conf"]).returncode == 1
    listed = lab.template.run(["cat", "/var/lib/cjdns-formula/template-public-keys"]).stdout
    assert pub in listed
    grep = lab.template.run(["grep", "-rl", cj.loads(planted)["privateKey"], "/etc", "/var/lib", "/usr/local"])
    assert grep.stdout == ""


def test_proxy_first_apply_second_apply_dry_run_and_end_state(lab):
    built_template(lab)
    dry = ok(lab.apply("proxy", "cjdns.proxy", "test=True"))
    assert not (lab.proxy.private_dir / "bind-dirs/etc/cjdns/cjdroute.conf").exists()
    identity = next(r for r in state_results(dry.data) if r["__id__"] == "cjdns-proxy-identity")
    assert identity["changes"]["ipv6"] == {"old": None, "new": "<new key, made on apply>"}
    first = ok(lab.apply("proxy", "cjdns.proxy"))
    assert predicted_ids(dry) == set(changed(first.data))
    made = changed(first.data)
    assert set(made["cjdns-proxy-peers"]["added"]) == {"192.0.2.10:47300 (node-a)", "[2001:db8::20]:47300 (node-b)"}
    ip6 = made["cjdns-proxy-identity"]["ipv6"]["new"]
    second = ok(lab.apply("proxy", "cjdns.proxy"))
    assert changed(second.data) == {}
    # The config lives in /rw (bind-dirs of the directory), 0600 in a 0700 directory.
    stored = lab.proxy.private_dir / "bind-dirs/etc/cjdns/cjdroute.conf"
    assert stored.stat().st_mode & 0o777 == 0o600 and stored.parent.stat().st_mode & 0o777 == 0o700
    data = cj.loads(stored.read_text())
    assert data["ipv6"] == ip6 and data["admin"]["password"] != "NONE"
    assert data["interfaces"]["UDPInterface"][0]["bind"] == "0.0.0.0:47300"
    assert data["router"]["interface"]["tunDevice"] == "tun0" and "dnsSeeds" not in data["router"]
    host = lab.proxy.testinfra_host()
    assert host.file(CONF).mode == 0o600
    rules = host.file("/rw/config/qubes-firewall.d/50-cjdns")
    assert rules.mode == 0o755 and "47300" in rules.content_string
    assert host.run("systemctl is-active cjdns").stdout.strip() == "active"
    address = ipaddress.ip_address(ip6).compressed
    assert address in wait_for_output(lab.proxy, ["ip", "-6", "addr", "show", "dev", "tun0"], address)
    assert "blackhole fc00::/8" in host.run("ip -6 route show").stdout
    nft = host.run("nft list ruleset").stdout
    assert "udp dport 47300 accept" in nft
    # Secrets stay out of what Salt printed.
    for secret in (data["privateKey"], data["admin"]["password"], "example-peer-password-1"):
        assert secret not in first.stdout + first.stderr + dry.stdout
    # After a reboot the identity is the same (it lives in /rw), and a re-apply changes nothing.
    lab.proxy.reboot()
    assert cj.loads(lab.proxy.path(CONF).read_text())["ipv6"] == ip6
    assert changed(ok(lab.apply("proxy", "cjdns.proxy")).data) == {}


def test_a_key_copied_from_the_template_is_replaced(lab):
    shared = (VECTORS / "genconf/genconf-2.conf").read_text()
    # The template once made a key (as the stock unit does), then bind-dirs copied it into
    # sys-cjdns's /rw at its first boot.
    plant_template_key(lab, shared)
    lab.template.shutdown()
    lab.proxy.boot()
    assert cj.loads(lab.proxy.path(CONF).read_text())["privateKey"] == cj.loads(shared)["privateKey"]
    # While sys-cjdns still runs on the old template root, the key lies beneath the bind mount.
    ok(lab.apply("template", "cjdns.template"))
    result = ok(lab.apply("proxy", "cjdns.proxy.identity"))
    ret = next(r for r in state_results(result.data) if r["__id__"] == "cjdns-proxy-identity")
    old = cj.loads(shared)
    assert ret["changes"]["ipv6"]["old"] == old["ipv6"] and ret["changes"]["ipv6"]["new"] != old["ipv6"]
    assert "template" in ret["comment"]
    assert cj.loads(lab.proxy.path(CONF).read_text())["privateKey"] != old["privateKey"]
    assert old["privateKey"] not in result.stdout


def test_a_template_key_is_recognised_after_a_reboot_too(lab):
    shared = (VECTORS / "genconf/genconf-3.conf").read_text()
    plant_template_key(lab, shared)
    lab.template.shutdown()
    lab.proxy.boot()
    built_template(lab)
    lab.proxy.reboot()  # now the template's root has no key; its record of public keys remains
    result = ok(lab.apply("proxy", "cjdns.proxy.identity"))
    ret = next(r for r in state_results(result.data) if r["__id__"] == "cjdns-proxy-identity")
    assert ret["changes"]["public_key"]["old"] == cj.loads(shared)["publicKey"]
    assert "listed in /var/lib/cjdns-formula/template-public-keys" in ret["comment"]


def test_an_own_valid_key_is_kept(lab):
    built_template(lab)
    own = (VECTORS / "genconf/genconf-seed.conf").read_text()
    rw = lab.proxy.private_dir / "bind-dirs/etc/cjdns"
    lab.proxy.boot()
    lab.proxy.sh(f"cat > {CONF} <<'EOF'\n{own}EOF\nchmod 600 {CONF}")
    result = ok(lab.apply("proxy", "cjdns.proxy"))
    assert "cjdns-proxy-identity" not in changed(result.data)
    assert cj.loads((rw / "cjdroute.conf").read_text())["privateKey"] == cj.loads(own)["privateKey"]
    # Comments of the generated file survive the managed edits.
    assert "// Private key:" in (rw / "cjdroute.conf").read_text()


def test_peers_are_merged_and_pruned_keeping_hand_added_ones_and_comments(lab):
    built_template(lab)
    ok(lab.apply("proxy", "cjdns.proxy"))
    conf = lab.proxy.path(CONF)
    text = conf.read_text()
    hand = cj.edit(text, ("interfaces", "UDPInterface", 0, "connectTo"),
                   {"198.51.100.7:9999": {"password": "hand-pw", "publicKey": KEYS[5]["public_key"]}})
    hand = hand.replace('"198.51.100.7:9999"', '// my friend, added by hand\n                "198.51.100.7:9999"')
    lab.proxy.sh(f"cat > {CONF} <<'EOF'\n{hand}EOF")
    peers = lab.pillar["cjdns"]["node"]["peers"]
    peers.pop("[2001:db8::20]:47300")
    lab.set_pillar({})
    dry = ok(lab.apply("proxy", "cjdns.proxy.config", "test=True"))
    real = ok(lab.apply("proxy", "cjdns.proxy.config"))
    assert changed(dry.data) == changed(real.data) == {"cjdns-proxy-peers": {"removed": ["[2001:db8::20]:47300"]}}
    after = conf.read_text()
    assert "// my friend, added by hand" in after
    connect = cj.loads(after)["interfaces"]["UDPInterface"][0]["connectTo"]
    assert set(connect) == {"192.0.2.10:47300", "198.51.100.7:9999"}
    assert cj.parse(after).strict


@pytest.mark.parametrize("override, reason", [
    ({"node": {"udp_port": 0}}, "cjdns.node.udp_port: 0 is not a port number"),
    ({"node": {"peers": {"host.example:1": {"password": "x", "publicKey": KEYS[0]["public_key"]}}}},
     "cjdns.node.peers.host.example:1: 'host.example' is not an IP address"),
    ({"node": {"udp_prot": 1}}, "cjdns.node.udp_prot: unknown key (did you mean udp_port?)"),
])
def test_bad_pillar_fails_and_leaves_every_file(lab, override, reason):
    built_template(lab)
    ok(lab.apply("proxy", "cjdns.proxy"))
    before = tree_digest(lab.proxy.private_dir)
    lab.set_pillar({"cjdns": override})
    result = lab.apply("proxy", "cjdns.proxy")
    assert result.rc == 2
    check = next(r for r in state_results(result.data) if r["__id__"] == "cjdns-pillar-valid")
    assert check["result"] is False and reason in check["comment"], check["comment"]
    assert not changed(result.data)
    assert tree_digest(lab.proxy.private_dir) == before


def test_proxy_sls_refuses_to_run_in_the_template(lab):
    result = lab.apply("template", "cjdns.proxy")
    assert result.rc == 2
    assert all(r["result"] is False and "runs in the Qubes AppVM sys-cjdns" in r["comment"] for r in state_results(result.data))
    assert lab.template.run(["test", "-e", CONF]).returncode == 1
