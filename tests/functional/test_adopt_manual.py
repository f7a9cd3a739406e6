"""Adopting a setup made by hand from the Qubes manual, in both variants: sys-cjdns still
holding the template's key (step 9 skipped) and holding a key of its own (step 9 done)."""

import hashlib
import json
import re

import pytest

from support.qubes_lab import Lab, namespaces_work, wait_for_output
from support.saltenv import changed, load_module, state_results

pytestmark = pytest.mark.skipif(not namespaces_work(), reason="needs root, mount namespaces and overlayfs")
cj = load_module()
LEGACY = "/etc/cjdroute.conf"
CONF = "/etc/cjdns/cjdroute.conf"

MANUAL_TEMPLATE = """set -e
git clone -q {repo} /root/cjdns
cd /root/cjdns && git -c advice.detachedHead=false checkout -q cjdns-v22.3 && ./do >/dev/null
cp cjdroute /usr/bin
cp contrib/systemd/cjdns*.service /etc/systemd/system/
systemctl enable cjdns
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


def ok(result):
    assert result.rc == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result


def digest_tree(root):
    return sorted((str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest())
                  for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def comments(text):
    return re.findall(r"//[^\n]*|/\*.*?\*/", text, re.S)


def holding(root, secret):
    """Files under root (as relative paths) whose bytes contain secret."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes())


def manual_layout(lab, own_key: bool) -> str:
    """The manual's steps 1-11; returns the config text sys-cjdns holds in /rw."""
    ok_sh = lambda qube, script: (lambda r: r if r.returncode == 0 else pytest.fail(r.stderr))(qube.sh(script))  # noqa: E731
    ok_sh(lab.template, MANUAL_TEMPLATE.format(repo=lab.repo))
    lab.template.shutdown()
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
    lab.proxy.sh("systemctl restart cjdns")
    return text


def lab_key(index):
    from support.saltenv import VECTORS

    return json.loads((VECTORS / "keys.json").read_text())["keys"][index]["public_key"]


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path / "lab")
    yield lab
    lab.cleanup()


@pytest.mark.parametrize("own_key", [False, True], ids=["template-key", "own-key"])
def test_manual_setup_is_adopted_losing_nothing(lab, own_key):
    before_text = manual_layout(lab, own_key)
    before = cj.loads(before_text)
    template_key = cj.loads((lab.template.root_upper / "etc/cjdroute.conf").read_text())["privateKey"]
    assert (before["privateKey"] == template_key) is not own_key
    rw = lab.proxy.private_dir

    # Dry runs touch nothing and predict exactly.
    snapshot = (digest_tree(lab.template.root_upper), digest_tree(rw))
    dry_template = ok(lab.apply("template", "cjdns.template", "test=True"))
    dry_proxy = ok(lab.apply("proxy", "cjdns.proxy", "test=True"))
    assert (digest_tree(lab.template.root_upper), digest_tree(rw)) == snapshot

    real_template = ok(lab.apply("template", "cjdns.template"))
    real_proxy = ok(lab.apply("proxy", "cjdns.proxy"))  # sys-cjdns still runs on the old template root
    for dry, real in ((dry_template, real_template), (dry_proxy, real_proxy)):
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
    assert holding(lab.template.root_upper, template_key) == []
    template_comments = [r["comment"] for r in state_results(real_template.data)]
    assert any("removed the template's private key from /etc/cjdroute.conf" in c for c in template_comments)
    assert any("retired the single-file bind-dirs entry for /etc/cjdroute.conf" in c for c in template_comments)

    # The config was adopted into the managed directory, in /rw, with every comment and the hand peer.
    adopted = (rw / "bind-dirs/etc/cjdns/cjdroute.conf").read_text()
    assert not (rw / "bind-dirs/etc/cjdroute.conf").exists()
    # The hand-added peer is there byte for byte (a comma may follow it: peers were added after it).
    assert HAND_PEER.format(key=lab_key(4)).rstrip("\n") in adopted
    assert comments(adopted) == comments(before_text)
    assert cj.parse(adopted).strict
    backup = rw / "bind-dirs/etc/cjdns/cjdroute.conf.manual-backup"
    assert backup.read_text() == before_text and backup.stat().st_mode & 0o777 == 0o600
    after = cj.loads(adopted)
    identity = changed(real_proxy.data).get("cjdns-proxy-identity")
    if own_key:
        assert identity is None and after["privateKey"] == before["privateKey"] and after["ipv6"] == before["ipv6"]
    else:
        assert identity["ipv6"]["old"] == before["ipv6"] and identity["ipv6"]["new"] == after["ipv6"] != before["ipv6"]
        assert after["privateKey"] != template_key
    # Outside the managed values, the data is what the user had.
    hand = after["interfaces"]["UDPInterface"][0]["connectTo"]["198.51.100.23:19264"]
    assert hand == before["interfaces"]["UDPInterface"][0]["connectTo"]["198.51.100.23:19264"]
    for key in ("security", "logging", "noBackground", "version"):
        assert after[key] == before[key]

    # No other copy of the node's key: the config and its backup only (the backup holds the old one).
    # Everything sys-cjdns wrote is in its /rw or its volatile root layer.
    files = {"/rw/" + p for p in holding(rw, after["privateKey"])} | {
        "/" + p for p in holding(lab.proxy.dir / "volatile", after["privateKey"])}
    expected = {"/rw/bind-dirs/etc/cjdns/cjdroute.conf"}
    if own_key:  # the backup of the adopted file holds the same (kept) key
        expected.add("/rw/bind-dirs/etc/cjdns/cjdroute.conf.manual-backup")
    assert files == expected
    assert lab.proxy.run(["test", "-e", LEGACY]).returncode == 1
    host = lab.proxy.testinfra_host()
    assert host.run("systemctl is-active cjdns").stdout.strip() == "active"
    import ipaddress
    address = ipaddress.ip_address(after["ipv6"]).compressed
    assert address in wait_for_output(lab.proxy, ["ip", "-6", "addr", "show", "dev", "tun0"], address)

    # Re-applying changes nothing, before and after sys-cjdns restarts on the new template root.
    assert changed(ok(lab.apply("template", "cjdns.template")).data) == {}
    assert changed(ok(lab.apply("proxy", "cjdns.proxy")).data) == {}
    lab.template.shutdown()
    lab.proxy.reboot()
    assert cj.loads(lab.proxy.path(CONF).read_text())["privateKey"] == after["privateKey"]
    assert changed(ok(lab.apply("proxy", "cjdns.proxy")).data) == {}
