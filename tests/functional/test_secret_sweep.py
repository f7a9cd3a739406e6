"""The secret sweep: apply every SLS and call every execution function at log level debug with
a known private key, admin password and peer passwords, then search what Salt printed and
returned, its log files and its cache directories. Zero hits, or the test names the leak."""

import json
import pathlib

import pytest

from support.qubes_lab import Lab, namespaces_work
from support.saltenv import VECTORS, load_module

pytestmark = pytest.mark.skipif(not namespaces_work(), reason="needs root, mount namespaces and overlayfs")
cj = load_module()
CONF = "/etc/cjdns/cjdroute.conf"
OWN = (VECTORS / "genconf/genconf-seed.conf").read_text()
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
            record(f"dom0 apply {args}", lab.dom0.call("state.apply", "cjdns.dom0", *args, log_level="debug"))
        for args in (("test=True",), ()):
            record(f"template apply {args}", lab.apply("template", "cjdns.template", *args, log_level="debug"))
        lab.template.shutdown()
        lab.proxy.boot()
        lab.proxy.sh(f"mkdir -p /etc/cjdns && chmod 700 /etc/cjdns && cat > {CONF} <<'EOF'\n{OWN}EOF\nchmod 600 {CONF}")
        for args in (("test=True",), (), ()):
            record(f"proxy apply {args}", lab.apply("proxy", "cjdns.proxy", *args, log_level="debug"))
        run = lambda argv: lab.proxy.run(argv)  # noqa: E731
        public = cj.identity_of(cj.loads(OWN)["privateKey"]).public_key
        calls = [("cjdns.address", public), ("cjdns.check_config",), ("cjdns.identity",), ("cjdns.peers",),
                 ("cjdns.status",), ("cjdns.peer_stats",), ("cjdns.ping",), ("cjdns.health",),
                 ("state.apply", "cjdns.proxy", "test=True"), ("cjdns.regenerate_identity",)]
        for call in calls:
            record(" ".join(call), lab.proxy_salt.call(*call, log_level="debug", runner=run))
        # credentials shows the requested peer's password on purpose (it is what the user hands
        # that peer); it must still show no private key and no admin password.
        credentials = lab.proxy_salt.call("cjdns.credentials", "alice", log_level="debug", runner=run)
        assert ALICE in credentials.stdout

        final = cj.loads(lab.proxy.path(CONF).read_text())
        secrets = {"original private key": cj.loads(OWN)["privateKey"], "regenerated private key": final["privateKey"],
                   "admin password": ADMIN, "alice's password": ALICE,
                   **{f"peer password {i}": p for i, p in enumerate(PEER_PASSWORDS)}}
        places = list(outputs)
        places.append(("cjdns.credentials alice (private key and admin password only)", credentials.stdout + credentials.stderr))
        for env in (lab.dom0, lab.template_salt, lab.proxy_salt):
            for path in sorted(pathlib.Path(env.root).rglob("*")):
                if path.is_file():
                    places.append((str(path), path.read_bytes().decode("utf-8", "replace")))
        leaks = []
        for label, text in places:
            for name, secret in secrets.items():
                if label.startswith("cjdns.credentials") and name == "alice's password":
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
