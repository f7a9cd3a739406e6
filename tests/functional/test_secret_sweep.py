"""The secret sweep: apply every SLS and call every execution function at log level debug with
a known private key, admin password and peer passwords, then search what Salt printed and
returned, its log files and its cache directories (dom0's Salt, the management DispVM's
salt-ssh: master cache and logs), and what stays in the qubes (their /var, /tmp, /root, /rw,
and their journal). Zero hits, or the test names the leak."""

import json
import os
from pathlib import Path

import pytest

from support.qubes_lab import Lab, containers_work
from support.saltenv import VECTORS, load_module

pytestmark = pytest.mark.skipif(not containers_work(), reason="needs root, systemd-nspawn and debootstrap")
cj = load_module()
CONF = "/etc/cjdns/cjdroute.conf"
OWN = (VECTORS / "genconf/genconf-seed.conf").read_text()
ADMIN = "sweep-admin-password-5f2c9"
ALICE = "sweep-alice-password-81d3e"
PEER_PASSWORDS = ["sweep-peer-password-one", "sweep-peer-password-two"]
# Searched in each qube (as the running qube sees them, tmpfs included).
QUBE_DIRS = ("/var", "/tmp", "/root", "/rw")
# Where secrets are by design: the node's config in sys-cjdns's /rw. Not searched either: Debian's
# packages and the local apt repository (big, and nothing of ours).
BY_DESIGN = ("/rw/bind-dirs/etc/cjdns/cjdroute.conf",)
NOT_OURS = ("/var/lib/qubes-emulation/", "/var/cache/apt/", "/var/lib/apt/lists/", "/var/lib/dpkg/",
            "/var/cache/debconf/")


def sweep_pillar():
    keys = json.loads((VECTORS / "keys.json").read_text())["keys"]
    return {"cjdns": {"node": {
        "admin_password": ADMIN,
        "authorized_passwords": {"alice": {"password": ALICE}},
        "peers": {"192.0.2.10:47300": {"password": PEER_PASSWORDS[0], "publicKey": keys[1]["public_key"]},
                  "[2001:db8::20]:47300": {"password": PEER_PASSWORDS[1], "publicKey": keys[2]["public_key"]}},
    }}}


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


def test_no_secret_appears_in_output_returns_logs_or_cache(tmp_path):
    lab = Lab(tmp_path / "lab", pillar=sweep_pillar())
    lab.pillar["cjdns"]["node"]["peers"] = sweep_pillar()["cjdns"]["node"]["peers"]
    lab.set_pillar({})
    outputs: list[tuple[str, str]] = []
    try:
        def record(label, result):
            outputs.append((label, result.stdout + "\n" + result.stderr))
            return result

        # dom0, the template, then sys-cjdns with a key of its own (planted, known).
        for args in (("test=True",), ()):
            record(f"dom0 apply {args}", lab.apply("dom0", "cjdns.dom0", *args, log_level="debug"))
        lab.template.boot()  # once for both runs (qubesctl would boot it for each)
        for args in (("test=True",), ()):
            result = record(f"template apply {args}", lab.apply("template", "cjdns.template", *args, log_level="debug"))
            assert result.rc == 0, result.stdout[-3000:]
        template_files = qube_files(lab.template)
        lab.template.shutdown()
        lab.proxy.boot()
        lab.proxy.sh(f"umask 077 && cat > {CONF} <<'EOF'\n{OWN}EOF")
        for args in (("test=True",), ()):  # a second dry run, once applied, is among the calls
            result = record(f"proxy apply {args}", lab.apply("proxy", "cjdns.proxy", *args, log_level="debug"))
            assert result.rc == 0, result.stdout[-3000:]
        public = cj.identity_of(cj.loads(OWN)["privateKey"]).public_key
        calls = [("cjdns.address", public), ("cjdns.check_config",), ("cjdns.identity",), ("cjdns.peers",),
                 ("cjdns.status",), ("cjdns.peer_stats",), ("cjdns.ping",), ("cjdns.health",),
                 ("state.apply", "cjdns.proxy", "test=True"), ("cjdns.regenerate_identity",)]
        for call in calls:
            record(" ".join(call), lab.call("proxy", *call, log_level="debug"))
        # credentials shows the requested peer's password on purpose (it is what the user hands
        # that peer); it must still show no private key and no admin password.
        jobs = lab.dispvm.root / "cache" / "jobs"
        earlier_jobs = {label for label, _ in host_files(jobs)}
        credentials = lab.call("proxy", "cjdns.credentials", "alice", log_level="debug")
        # salt-ssh's master job cache keeps each return, so this one holds alice's password too.
        credentials_jobs = {label for label, _ in host_files(jobs)} - earlier_jobs
        assert ALICE in credentials.stdout

        final = cj.loads(lab.proxy.path(CONF).read_text())
        assert final["privateKey"] != cj.loads(OWN)["privateKey"]  # regenerate_identity did
        secrets = {"original private key": cj.loads(OWN)["privateKey"], "regenerated private key": final["privateKey"],
                   "admin password": ADMIN, "alice's password": ALICE,
                   **{f"peer password {i}": p for i, p in enumerate(PEER_PASSWORDS)}}
        places = list(outputs)
        places.append(("cjdns.credentials alice (private key and admin password only)", credentials.stdout + credentials.stderr))
        # Salt's logs and caches: dom0's salt-call, the management DispVM's salt-ssh (its
        # rendered pillar is not searched: the pillar holds the secrets by definition).
        for top in (lab.dom0.root, lab.dispvm.root):
            places += host_files(top)
        places += template_files + qube_files(lab.proxy)
        assert any("/var/log/salt" in label or "/log/" in label for label, _ in places)
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
    finally:
        lab.cleanup()
