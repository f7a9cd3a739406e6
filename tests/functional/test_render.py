"""Every SLS renders for every kind of minion; init.sls and the top file pick the right parts."""

import json
import sys

import pytest

from support.saltenv import REPO, TESTS, SaltEnv

sys.path.insert(0, str(TESTS / "emulation" / "qubes"))
import qubes_db  # noqa: E402

SLS = sorted(str(p.relative_to(REPO).with_suffix("")).replace("/", ".").removesuffix(".init")
             for p in (REPO / "cjdns").rglob("*.sls"))


def env_for(tmp_path, kind):
    if kind == "dom0":
        db = tmp_path / "qubes.json"
        qubes_db.new_db(str(db))
        return SaltEnv(tmp_path / "s", minion_id="dom0", extra_module_dirs=[TESTS / "emulation/qubes"],
                       opts={"qvm_emulation_db": str(db), "qvm_emulation_version": "4.2"})
    pillar = {"qubes": {"type": {"template": "template", "proxy": "app"}[kind]}} if kind in ("template", "proxy") else {}
    minion = {"template": "cjdns-gw", "proxy": "sys-cjdns", "node": "node1"}[kind]
    return SaltEnv(tmp_path / "s", pillar=pillar, minion_id=minion)


@pytest.mark.parametrize("kind", ["dom0", "template", "proxy", "node"])
def test_every_sls_renders(tmp_path, kind):
    env = env_for(tmp_path, kind)
    result = env.call("state.show_sls", ",".join(SLS))
    assert result.rc == 0 and isinstance(result.data, dict), result.stdout[-3000:]
    # SLS that have nothing to do on this minion (e.g. no client qubes) render to no states.
    assert len({s["__sls__"] for s in result.data.values() if isinstance(s, dict)}) >= 3


@pytest.mark.parametrize("kind, part", [("dom0", "cjdns.dom0"), ("template", "cjdns.template"),
                                        ("proxy", "cjdns.proxy"), ("node", "cjdns.node")])
def test_init_includes_what_fits_the_minion(tmp_path, kind, part):
    env = env_for(tmp_path, kind)
    states = env.call("state.show_sls", "cjdns").data
    parts = {s["__sls__"] for s in states.values() if isinstance(s, dict)}
    assert {p for p in parts if p.startswith(part)} and all(p.startswith(part) or p == "cjdns.pillar" for p in parts), parts
    absent = env.call("state.show_sls", "cjdns", "pillar=" + json.dumps({"cjdns": {"absent": True}})).data
    assert {s["__sls__"] for s in absent.values() if isinstance(s, dict)} <= {f"cjdns.absent.{part.split('.')[1]}", "cjdns.pillar"}


def test_other_qubes_get_nothing(tmp_path):
    env = SaltEnv(tmp_path / "s", pillar={"qubes": {"type": "app"}}, minion_id="personal")
    states = env.call("state.show_sls", "cjdns").data
    assert list(states) == ["cjdns-nothing-for-this-qube"]


def test_top_targets_dom0_the_template_and_the_proxy_by_their_names(tmp_path):
    env = SaltEnv(tmp_path / "s", pillar={"cjdns": {"qubes": {"template": "tpl-cjdns", "proxy": "sys-mesh"}}})
    top = env.call("slsutil.renderer", "salt://cjdns/init.top").data
    assert top == {"base": {"dom0": ["cjdns.dom0"], "tpl-cjdns": ["cjdns.template"], "sys-mesh": ["cjdns.proxy"]}}
