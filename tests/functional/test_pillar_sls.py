"""cjdns.pillar with pillar `cjdns` missing (all defaults) or given as any kind of mapping."""

import pytest
import yaml

from support.saltenv import REPO, SaltEnv, state_results

DEFAULTS = yaml.safe_load((REPO / "cjdns/defaults.yaml").read_text())["cjdns"]

# Pillar SLS in Python, so the mapping type Salt gets is the one named here.
PY_PILLAR = """#!py
from collections import OrderedDict


def run():
    return {{"cjdns": {kind}(node={kind}(udp_port={port}), paths={kind}(unit="/etc/systemd/system/mesh.service"))}}
"""


def env_with(tmp_path, kind: str | None, port: int = 47301) -> SaltEnv:
    env = SaltEnv(tmp_path / "s", minion_id="node1")
    if kind is not None:
        (env.pillar_dir / "test.sls").write_text(PY_PILLAR.format(kind=kind, port=port))
    return env


@pytest.mark.parametrize("kind", [None, "OrderedDict", "dict"])
def test_pillar_sls_accepts_no_cjdns_key_and_any_mapping(tmp_path, kind):
    env = env_with(tmp_path, kind)
    result = env.call("state.apply", "cjdns.pillar")
    assert result.rc == 0, result.stdout[-2000:]
    (state,) = state_results(result.data)
    assert state["result"] is True and state["comment"] == "pillar cjdns is valid"


@pytest.mark.parametrize("kind", [None, "OrderedDict"])
def test_node_sls_renders_with_defaults_where_pillar_is_silent(tmp_path, kind):
    env = env_with(tmp_path, kind)
    result = env.call("state.show_sls", "cjdns.node")
    assert result.rc == 0 and isinstance(result.data, dict), result.stdout[-2000:]
    unit = result.data["cjdns-node-unit"]["file"]
    name = next(arg["name"] for arg in unit if isinstance(arg, dict) and "name" in arg)
    context = next(arg["context"] for arg in unit if isinstance(arg, dict) and "context" in arg)
    if kind is None:
        assert name == DEFAULTS["paths"]["unit"]
        assert context["cjdns"]["node"]["udp_port"] == DEFAULTS["node"]["udp_port"]
    else:
        assert name == "/etc/systemd/system/mesh.service"
        assert context["cjdns"]["node"]["udp_port"] == 47301
    assert context["cjdns"]["node"]["tun_device"] == DEFAULTS["node"]["tun_device"]


def test_a_bad_value_in_an_ordereddict_pillar_is_still_named(tmp_path):
    env = env_with(tmp_path, "OrderedDict", port=70000)
    result = env.call("state.apply", "cjdns.pillar")
    assert result.rc != 0
    (state,) = state_results(result.data)
    assert state["result"] is False
    assert "cjdns.node.udp_port: 70000 is not a port number (1-65535)" in state["comment"]
