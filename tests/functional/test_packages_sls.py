"""cjdns.template.packages and cjdns.node.packages: the Debian packages the formula needs, from
pillar cjdns:packages, installed after the pillar check and before every state that needs
X25519 (python3-cryptography), in Salt's real order (state.show_low_sls)."""

import json

import pytest
import yaml

from support.saltenv import REPO, SaltEnv

DEFAULTS = yaml.safe_load((REPO / "cjdns/defaults.yaml").read_text())["cjdns"]["packages"]
# The cjdns states that make or check keys (X25519).
X25519_STATES = {"identity", "template_keys_absent", "adopted"}
KINDS = {"template": ({"qubes": {"type": "template"}}, "cjdns-gw"), "node": ({}, "node1"),
         "proxy": ({"qubes": {"type": "app"}}, "sys-cjdns")}


def env_for(tmp_path, kind, cjdns=None):
    pillar, minion = KINDS[kind]
    return SaltEnv(tmp_path / "s", pillar={**pillar, **({"cjdns": cjdns} if cjdns else {})}, minion_id=minion)


def low(env, sls):
    result = env.call("state.show_low_sls", sls)
    assert result.rc == 0 and isinstance(result.data, list), result.stdout[-3000:]
    return sorted(result.data, key=lambda chunk: chunk["order"])


def requires(chunk):
    return {(kind, ref) for req in chunk.get("require", []) for kind, ref in req.items()}


def package_chunk(chunks, prefix):
    (chunk,) = [c for c in chunks if c["state"] == "pkg" and c["__id__"] == f"{prefix}-packages"]
    return chunk


@pytest.mark.parametrize("kind, sls, expected", [
    ("template", "cjdns.template", DEFAULTS["template"]),
    ("template", "cjdns.template.no-keys", DEFAULTS["template"]),
    ("node", "cjdns.node", DEFAULTS["node"]),
])
def test_packages_come_after_the_pillar_check_and_before_every_x25519_state(tmp_path, kind, sls, expected):
    chunks = low(env_for(tmp_path, kind), sls)
    prefix = f"cjdns-{kind}"
    pkg = package_chunk(chunks, prefix)
    assert pkg["fun"] == "installed" and pkg["pkgs"] == expected and pkg["reload_modules"] is True
    assert ("cjdns", "cjdns-pillar-valid") in requires(pkg)
    ids = [c["__id__"] for c in chunks]
    assert ids.index("cjdns-pillar-valid") < ids.index(pkg["__id__"])
    x25519 = [c for c in chunks if c["state"] == "cjdns" and c["fun"] in X25519_STATES]
    assert x25519, ids
    for chunk in x25519:
        assert ids.index(pkg["__id__"]) < ids.index(chunk["__id__"]), ids
        assert ("pkg", pkg["__id__"]) in requires(chunk), chunk["__id__"]


def test_defaults_are_what_a_minimal_template_and_a_plain_node_lack():
    assert DEFAULTS == {"template": ["python3-cryptography", "qubes-core-agent-networking"],
                        "node": ["python3-cryptography"], "extra": []}


@pytest.mark.parametrize("kind", ["template", "node"])
def test_pillar_extends_or_replaces_the_lists(tmp_path, kind):
    env = env_for(tmp_path, kind, {"packages": {"extra": ["tcpdump", "python3-cryptography"]}})
    assert package_chunk(low(env, f"cjdns.{kind}"), f"cjdns-{kind}")["pkgs"] == DEFAULTS[kind] + ["tcpdump"]
    env.set_pillar({**KINDS[kind][0], "cjdns": {"packages": {kind: ["python3-cryptography", "jq"], "extra": ["jq"]}}})
    assert package_chunk(low(env, f"cjdns.{kind}"), f"cjdns-{kind}")["pkgs"] == ["python3-cryptography", "jq"]


def test_an_empty_list_installs_nothing_and_the_order_holds(tmp_path):
    env = env_for(tmp_path, "node", {"packages": {"node": []}})
    chunks = low(env, "cjdns.node")
    assert package_chunk(chunks, "cjdns-node")["pkgs"] == []
    (identity,) = [c for c in chunks if c["fun"] == "identity"]
    assert ("pkg", "cjdns-node-packages") in requires(identity)


def test_sys_cjdns_and_uninstalling_touch_no_packages(tmp_path):
    """sys-cjdns gets its packages from the template; cjdns.absent removes none of them."""
    for kind, sls in (("proxy", "cjdns.proxy"), ("proxy", "cjdns.absent.proxy"),
                      ("template", "cjdns.absent.template"), ("node", "cjdns.absent.node")):
        chunks = low(env_for(tmp_path / kind / sls, kind), sls)
        assert not [c["__id__"] for c in chunks if c["state"] == "pkg"], sls


def test_dry_run_predicts_the_installs_and_installs_nothing(tmp_path):
    missing = "cjdns-formula-test-no-such-package"
    env = env_for(tmp_path, "node", {"packages": {"extra": [missing]}})
    result = env.call("state.apply", "cjdns.node.packages", "test=True")
    assert result.rc == 0, result.stdout[-2000:]
    (ret,) = [r for r in result.data.values() if r["__id__"] == "cjdns-node-packages"]
    assert ret["result"] is None and missing in ret["comment"]
    assert ret["changes"][missing] == {"new": "installed", "old": ""}


def test_a_bad_package_name_stops_the_run_before_apt(tmp_path):
    env = env_for(tmp_path, "node", {"packages": {"extra": ["-oAPT::Get::AllowUnauthenticated=1"]}})
    result = env.call("state.apply", "cjdns.node.packages", "test=True")
    assert result.rc != 0
    states = {r["__id__"]: r for r in result.data.values()}
    assert states["cjdns-pillar-valid"]["result"] is False
    assert "- cjdns.packages.extra[0]: '-oAPT::Get::AllowUnauthenticated=1' is not a Debian package name" in (
        states["cjdns-pillar-valid"]["comment"])
    assert states["cjdns-node-packages"]["result"] is False
    assert "requisite failed" in states["cjdns-node-packages"]["comment"]
    assert "AllowUnauthenticated" not in json.dumps(states["cjdns-node-packages"])
