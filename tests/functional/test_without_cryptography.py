"""Without the `cryptography` library (Salt's thin under qubesctl, a minimal Debian template):
the module and the states still load through Salt's loader; only X25519 fails, with the
package to install, and the states that need it change nothing."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from support.saltenv import TESTS, VECTORS, SaltEnv, load_module

cj = load_module()
GENCONF = VECTORS / "genconf/genconf-2.conf"
MISSING = ("cjdns keys (X25519) need the Python library 'cryptography', which cannot be imported here: "
           "install the Debian package python3-cryptography (apt-get install python3-cryptography) "
           "or the pip package cryptography (pip install cryptography)")

# Runs in a Python where `import cryptography` fails; prints what each call gave.
PROBE = r'''
import json, pathlib, sys
from support.saltenv import SaltEnv

base, conf, newdir, tpl = map(pathlib.Path, sys.argv[1:5])
try:
    import cryptography  # noqa: F401
    sys.exit("cryptography imported: the shim did not work")
except ImportError:
    pass
mods, states = SaltEnv(base).loader()
out = {"loaded": {"module": "cjdns.address" in mods, "states": "cjdns.identity" in states}}

def call(fun, *args, **kwargs):
    try:
        return {"ok": mods[fun](*args, **kwargs)}
    except Exception as error:
        return {"error": type(error).__name__, "text": str(error)}

def single(fun, **kwargs):
    (ret,) = mods["state.single"](fun, **kwargs).values()
    return {k: ret[k] for k in ("result", "changes", "comment")}

key = "0ccvtu9w6dd9qus12pqzsc37rp16p8vcptzx75wkm64406y6g9k0.k"
out["address"] = call("cjdns.address", key)
out["check_config"] = call("cjdns.check_config", str(conf))
out["peers"] = call("cjdns.peers", str(conf))
out["status"] = call("cjdns.status", str(conf), timeout=0.3)
out["identity"] = call("cjdns.identity", str(conf))
out["credentials"] = call("cjdns.credentials", None, str(conf))
out["regenerate_identity"] = call("cjdns.regenerate_identity", str(conf))
out["state_identity"] = single("cjdns.identity", name=str(conf))
out["state_identity_test"] = single("cjdns.identity", name=str(conf), test=True)
out["state_identity_new"] = single("cjdns.identity", name=str(newdir / "cjdroute.conf"))
out["state_identity_new_test"] = single("cjdns.identity", name=str(newdir / "cjdroute.conf"), test=True)
out["state_config_test"] = single("cjdns.config", name=str(conf), settings={"udp_port": 47300}, test=True)
out["state_no_keys"] = single("cjdns.template_keys_absent", name=str(tpl / "public-keys"), paths=[str(tpl / "cjdroute.conf")])
out["state_no_keys_test"] = single("cjdns.template_keys_absent", name=str(tpl / "public-keys"),
                                   paths=[str(tpl / "cjdroute.conf")], test=True)
print(json.dumps(out))
'''


def shim(directory):
    """A sitecustomize that makes `import cryptography` fail, as in Salt's thin."""
    directory.mkdir()
    (directory / "sitecustomize.py").write_text('import sys\nsys.modules["cryptography"] = None\n')
    return directory


def sha(directory):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nocrypto")
    files = tmp / "files"
    for sub in ("node", "new", "template"):
        (files / sub).mkdir(parents=True)
    conf = files / "node" / "cjdroute.conf"
    conf.write_bytes(GENCONF.read_bytes())
    (files / "template" / "cjdroute.conf").write_bytes(GENCONF.read_bytes())
    before = sha(files)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim(tmp / "shim")), str(TESTS)])}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp / "salt"), str(conf), str(files / "new"),
                           str(files / "template")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), before, sha(files), proc


def test_the_module_and_the_states_load(probe):
    assert probe[0]["loaded"] == {"module": True, "states": True}


def test_what_needs_no_x25519_works(probe):
    out = probe[0]
    assert out["address"] == {"ok": "fc74:b0f1:46d7:eb4c:ff3c:64b4:b6a7:6f9d"}
    assert out["check_config"]["ok"]["ok"] is True
    assert out["check_config"]["ok"]["warnings"] == [f"publicKey: not checked against privateKey: {MISSING}"]
    assert "ok" in out["peers"]
    data = cj.loads(GENCONF.read_text())
    status = out["status"]["ok"]
    assert (status["public_key"], status["ipv6"], status["identity_checked"]) == (data["publicKey"], data["ipv6"], False)
    assert status["admin"]["reachable"] is False


@pytest.mark.parametrize("fun", ["identity", "credentials", "regenerate_identity"])
def test_what_needs_x25519_says_which_package_to_install(probe, fun):
    assert probe[0][fun] == {"error": "CommandExecutionError", "text": MISSING}


def test_identity_state_fails_cleanly_and_changes_nothing(probe):
    out, before, after, _ = probe
    for case in ("state_identity", "state_identity_new"):
        assert out[case] == {"result": False, "changes": {}, "comment": MISSING}, case
    assert after == before  # no new config either


def test_dry_run_does_not_break_before_the_package_is_installed(probe):
    out = probe[0]
    # A new identity needs no key in a dry run; checking an existing one waits for the library.
    assert out["state_identity_new_test"]["result"] is None
    assert out["state_identity_new_test"]["changes"]["ipv6"] == {"old": None, "new": "<new key, made on apply>"}
    assert out["state_identity_test"] == {"result": None, "changes": {},
                                          "comment": f"test mode: {MISSING}; a real run needs it installed first"}
    assert out["state_config_test"]["result"] is None  # settings need no X25519
    assert "interfaces/UDPInterface/0/bind" in out["state_config_test"]["changes"]


def test_template_key_is_not_removed_without_recording_its_public_half(probe):
    out, before, after, _ = probe
    assert out["state_no_keys"] == {"result": False, "changes": {}, "comment": MISSING}
    assert out["state_no_keys_test"]["result"] is None
    assert out["state_no_keys_test"]["comment"].endswith(f"(and record its public half, which needs X25519: {MISSING})")
    assert after == before


def test_no_secret_in_the_output(probe):
    data = cj.loads(GENCONF.read_text())
    assert data["privateKey"] not in probe[3].stdout + probe[3].stderr
    assert data["admin"]["password"] not in json.dumps(probe[0]["status"])


def test_salt_call_loads_the_states_without_cryptography(tmp_path):
    """The symptom in a Qubes template: "State 'cjdns.pillar_valid' was not found"."""
    env = SaltEnv(tmp_path / "salt", pillar={"cjdns": {"node": {"udp_port": 47300}}})
    extra = {"PYTHONPATH": str(shim(tmp_path / "shim"))}
    result = env.call("state.apply", "cjdns.pillar", env=extra)
    assert result.rc == 0, result.stdout[-2000:]
    (ret,) = result.data.values()
    assert ret["result"] is True and ret["comment"] == "pillar cjdns is valid"
    ident = env.call("cjdns.identity", str(GENCONF), env=extra)
    assert ident.rc == 1 and MISSING in ident.stderr
