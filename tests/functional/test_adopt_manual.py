"""Adopting a setup made by hand from the Qubes manual, in both variants: sys-cjdns still
holding the template's key (step 9 skipped) and holding a key of its own (step 9 done).

The manual's steps run by shell in the emulated qubes (Debian 13 under their own systemd); the
formula reaches them by salt-ssh as qubesctl does. One lab for the module: the template part
of the manual and of the adoption is the same in both variants (step 9 touches sys-cjdns
only), so it runs once, in the first; the second starts again from snapshots of the
template's volumes and a new sys-cjdns."""

import hashlib
import ipaddress
import json
import re
import subprocess

import pytest

from support.qubes_lab import Lab, containers_work, wait_for_output
from support.saltenv import VECTORS, changed, load_module, state_results

pytestmark = pytest.mark.skipif(not containers_work(), reason="needs root, systemd-nspawn and debootstrap")
cj = load_module()
LEGACY = "/etc/cjdroute.conf"
CONF = "/etc/cjdns/cjdroute.conf"

# The manual's template steps: packages (a minimal template has neither git nor the
# python3-cryptography the stand-in cjdroute runs on, nor qubes-core-agent-networking, which
# Qubes requires in the template of any qube that provides network), build, install, start
# once so the stock unit makes /etc/cjdroute.conf, the single-file bind-dirs entry.
MANUAL_TEMPLATE = """set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq git python3-cryptography qubes-core-agent-networking >/dev/null
git clone -q {repo} /root/cjdns
cd /root/cjdns && git -c advice.detachedHead=false checkout -q cjdns-v22.3 && ./do >/dev/null
cp cjdroute /usr/bin
cp contrib/systemd/cjdns*.service /etc/systemd/system/
systemctl enable -q cjdns
systemctl start cjdns
sleep 1
test -s /etc/cjdroute.conf
mkdir -p /etc/qubes-bind-dirs.d
echo "binds+=( '/etc/cjdroute.conf' )" > /etc/qubes-bind-dirs.d/10_cjdns.conf
cd / && mv /root/cjdns /opt
"""

HAND_PEER = '''                    // my other peer: fc0d:378f:a61e:5223:6dd1:bd72:ad03:62fd
                    "198.51.100.23:19264": {{
                        "login": "default-login",
                        "password":"13yj3nk85myvt5r8pb8x5140n4x4cfg",
                        "publicKey":"{key}",
                        "peerName":"my-other-peer"
                    }}
'''
# What the qube's own machinery writes on any boot or salt-ssh run, whatever the formula does
# (as in test_qubes_booted.py): apt's index (Salt's pkg refreshes it in test mode too),
# systemd's state, logs.
NOT_THE_FORMULAS = ("var/cache/", "var/lib/apt/lists/", "var/lib/systemd/", "var/log/", "var/tmp/",
                    "etc/.pwd.lock")


def ok(result):
    assert isinstance(result.data, dict), result.stdout[-4000:] + result.stderr[-2000:]
    failed = [(r["__id__"], r["comment"]) for r in state_results(result.data) if r["result"] is False]
    assert result.rc == 0 and not failed, failed or result.stderr[-2000:]
    return result


def ok_sh(qube, script):
    result = qube.sh(script)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def digest_tree(root):
    return sorted((str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest())
                  for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and not str(p.relative_to(root)).startswith(NOT_THE_FORMULAS))


def comments(text):
    return re.findall(r"//[^\n]*|/\*.*?\*/", text, re.S)


def holding(root, secret):
    """Files under root (as relative paths) whose bytes contain secret."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes())


def lab_key(index):
    return json.loads((VECTORS / "keys.json").read_text())["keys"][index]["public_key"]


def template_volumes(lab):
    return {"root": lab.template.root_upper, "private": lab.template.private_dir}


def save_template(lab, name):
    lab.template.shutdown()
    for part, path in template_volumes(lab).items():
        subprocess.run(["cp", "-a", str(path), str(lab.dir / f"{name}-{part}")], check=True)


def restore_template(lab, name):
    """The template's volumes as save_template kept them; False if never saved."""
    if not (lab.dir / f"{name}-root").exists():
        return False
    lab.template.shutdown()
    for part, path in [*template_volumes(lab).items(), ("work", lab.template.dir / "root.work")]:
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)
        if part != "work":
            subprocess.run(["cp", "-a", str(lab.dir / f"{name}-{part}"), str(path)], check=True)
    return True


def manual_layout(lab, own_key: bool) -> str:
    """The manual's steps 1-11 with a new sys-cjdns; returns the config text it holds in /rw."""
    if not restore_template(lab, "manual"):
        ok_sh(lab.template, MANUAL_TEMPLATE.format(repo=lab.repo))
        save_template(lab, "manual")
    lab.proxy.shutdown()
    subprocess.run(["rm", "-rf", "--one-file-system", str(lab.proxy.private_dir)], check=True)
    lab.proxy.private_dir.mkdir()
    lab.proxy.boot()
    if own_key:  # step 9: a new key for sys-cjdns
        ok_sh(lab.proxy, "systemctl stop cjdns && umount /etc/cjdroute.conf && rm /etc/cjdroute.conf && "
                         "systemctl start cjdns && sleep 1 && cp /etc/cjdroute.conf /rw/bind-dirs/etc/")
        lab.proxy.reboot()
    # step 11: a peer added by hand, with the user's comment, in connectTo (IPv4)
    rw = lab.proxy.private_dir / "bind-dirs/etc/cjdroute.conf"
    text = rw.read_text()
    anchor = '"connectTo": {\n'
    assert anchor in text
    text = text.replace(anchor, anchor + HAND_PEER.format(key=lab_key(4)), 1)
    rw.write_text(text)
    ok_sh(lab.proxy, "systemctl restart cjdns")
    return text


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    # wipe=False: Salt's thin stays in the qubes between calls (speed); -w is test_qubes_booted's.
    lab = Lab(tmp_path_factory.mktemp("adopt") / "lab", wipe=False)
    yield lab
    lab.cleanup()


@pytest.mark.parametrize("own_key", [False, True], ids=["template-key", "own-key"])
def test_manual_setup_is_adopted_losing_nothing(lab, own_key):
    before_text = manual_layout(lab, own_key)
    before = cj.loads(before_text)
    template_key = cj.loads((lab.template.root_upper / "etc/cjdroute.conf").read_text())["privateKey"]
    assert (before["privateKey"] == template_key) is not own_key
    assert lab.proxy.run(["systemctl", "is-active", "cjdns"]).stdout.strip() == "active"  # the stock unit
    rw = lab.proxy.private_dir
    # The template's part is the same in both variants: done and checked once.
    template_done = restore_template(lab, "adopted") if own_key else False

    # Dry runs touch nothing and predict exactly.
    snapshot = (digest_tree(lab.template.root_upper), digest_tree(rw))
    if not template_done:
        dry_template = ok(lab.apply("template", "cjdns.template", "test=True"))
    dry_proxy = ok(lab.apply("proxy", "cjdns.proxy", "test=True"))
    if not template_done:
        assert (digest_tree(lab.template.root_upper), digest_tree(rw)) == snapshot
        real_template = ok(lab.apply("template", "cjdns.template"))
        save_template(lab, "adopted")
    else:
        assert digest_tree(rw) == snapshot[1]
    real_proxy = ok(lab.apply("proxy", "cjdns.proxy"))  # sys-cjdns still runs on the old template root
    pairs = [(dry_proxy, real_proxy)] + ([] if template_done else [(dry_template, real_template)])
    for dry, real in pairs:
        predicted = {r["__id__"] for r in state_results(dry.data) if r["result"] is None}
        assert predicted == set(changed(real.data))
    for state_id in ("cjdns-proxy-manual-config-adopted", "cjdns-proxy-config", "cjdns-proxy-peers",
                     "cjdns-proxy-confdir-bound"):
        assert changed(dry_proxy.data)[state_id] == changed(real_proxy.data)[state_id], state_id

    # The template holds no key; the manual's bind entry and stock resume unit are gone.
    upper = lab.template.root_upper
    assert not (upper / "etc/cjdroute.conf").exists() or (upper / "etc/cjdroute.conf").is_char_device()
    assert lab.template.run(["test", "-e", LEGACY]).returncode == 1
    assert lab.template.run(["test", "-e", "/etc/qubes-bind-dirs.d/10_cjdns.conf"]).returncode == 1
    assert lab.template.run(["test", "-e", "/etc/systemd/system/cjdns-resume.service"]).returncode == 1
    lab.template.shutdown()
    assert holding(lab.template.root_upper, template_key) == []
    assert holding(lab.template.private_dir, template_key) == []
    if not template_done:
        template_comments = [r["comment"] for r in state_results(real_template.data)]
        assert any("removed the template's private key from /etc/cjdroute.conf" in c for c in template_comments)
        assert any("retired the single-file bind-dirs entry for /etc/cjdroute.conf" in c for c in template_comments)
        assert template_key not in real_template.stdout + real_template.stderr + dry_template.stdout

    # The config was adopted into the managed directory, in /rw, with every comment and the hand peer.
    adopted = (rw / "bind-dirs/etc/cjdns/cjdroute.conf").read_text()
    assert not (rw / "bind-dirs/etc/cjdroute.conf").exists()
    # The hand-added peer is there byte for byte (a comma may follow it: peers were added after it).
    assert HAND_PEER.format(key=lab_key(4)).rstrip("\n") in adopted
    assert comments(adopted) == comments(before_text)
    assert cj.parse(adopted).strict
    # No backup: it would be another copy of the key (cjdns:keep_manual_backup asks for one).
    assert not (rw / "bind-dirs/etc/cjdns/cjdroute.conf.manual-backup").exists()
    after = cj.loads(adopted)
    identity = changed(real_proxy.data).get("cjdns-proxy-identity")
    if own_key:
        assert identity is None and after["privateKey"] == before["privateKey"] and after["ipv6"] == before["ipv6"]
    else:
        assert identity["ipv6"]["old"] == before["ipv6"] and identity["ipv6"]["new"] == after["ipv6"] != before["ipv6"]
        assert after["privateKey"] != template_key
    for secret in (after["privateKey"], before["privateKey"]):
        assert secret not in real_proxy.stdout + real_proxy.stderr + dry_proxy.stdout
    # Outside the managed values, the data is what the user had.
    hand = after["interfaces"]["UDPInterface"][0]["connectTo"]["198.51.100.23:19264"]
    assert hand == before["interfaces"]["UDPInterface"][0]["connectTo"]["198.51.100.23:19264"]
    for key in ("security", "logging", "noBackground", "version"):
        assert after[key] == before[key]

    # No other copy of the node's key than the config (README "no other copy of the key").
    # Everything sys-cjdns wrote is in its /rw or its volatile root layer.
    files = {"/rw/" + p for p in holding(rw, after["privateKey"])} | {
        "/" + p for p in holding(lab.proxy.volatile, after["privateKey"])}
    assert files == {"/rw/bind-dirs/etc/cjdns/cjdroute.conf"}
    if not own_key:  # the template's key it came with is nowhere in sys-cjdns's /rw either
        assert holding(rw, before["privateKey"]) == []
    assert lab.proxy.run(["test", "-e", LEGACY]).returncode == 1
    host = lab.proxy.testinfra_host()
    assert host.run("systemctl is-active cjdns").stdout.strip() == "active"
    address = ipaddress.ip_address(after["ipv6"]).compressed
    assert address in wait_for_output(lab.proxy, ["ip", "-6", "addr", "show", "dev", "tun0"], address)

    # Re-applying changes nothing, before and after sys-cjdns restarts on the new template root.
    if not template_done:
        assert changed(ok(lab.apply("template", "cjdns.template")).data) == {}
    assert changed(ok(lab.apply("proxy", "cjdns.proxy")).data) == {}
    lab.template.shutdown()
    lab.proxy.reboot()
    assert cj.loads(lab.proxy.path(CONF).read_text())["privateKey"] == after["privateKey"]
    assert lab.proxy.run(["systemctl", "is-active", "cjdns"]).stdout.strip() == "active"
    assert changed(ok(lab.apply("proxy", "cjdns.proxy")).data) == {}
