"""Nothing from pillar reaches SLS text unquoted: every SLS rendered with a hostile value in
each string field of the defaults (newline, colon, quotes, `{{`) gives the same states, with
the same functions, as with the defaults; the value stays data (issue 11)."""

import copy
import sys

import pytest
import yaml

from support.saltenv import REPO, TESTS, SaltEnv

sys.path.insert(0, str(TESTS / "emulation" / "qubes"))
import qubes_db  # noqa: E402

DEFAULTS = yaml.safe_load((REPO / "cjdns/defaults.yaml").read_text())["cjdns"]
SLS = sorted(str(p.relative_to(REPO).with_suffix("")).replace("/", ".").removesuffix(".init")
             for p in (REPO / "cjdns").rglob("*.sls"))
HOSTILE = "h0stile\"'{{ 7*7 }}: x\n  cjdns-injected:\n    cmd.run:\n      - name: id\n#"
# Fields whose value picks which states exist (a hostile one matches no choice): states may
# only go missing there, never appear.
# The source template is looked up while rendering, only when its name is valid.
CHOICES = {"install.method", "qubes.template", "qubes.proxy", "qubes.source_template"}


def string_fields(tree, path=()):
    """Dotted paths of every string leaf (and list of strings) in the defaults."""
    for key, value in tree.items():
        where = (*path, key)
        if isinstance(value, dict):
            yield from string_fields(value, where)
        elif isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)) \
                or key in ("clients", "adopt", "dns_seeds", "compromised_keys"):
            yield ".".join(where)


FIELDS = sorted(set(string_fields(DEFAULTS)) - {"node.admin_password"}) + ["node.admin_password"]


def with_value(fields, value):
    """The defaults with `value` in each of `fields` (a list field gets `[value]`)."""
    pillar = {"cjdns": copy.deepcopy(DEFAULTS)}
    for field in fields:
        node = pillar["cjdns"]
        *parents, leaf = field.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = [value] if isinstance(node[leaf], list) else value
    pillar["cjdns"]["qubes"].setdefault("clients", [])
    return pillar


# One render with the hostile value in every field that does not choose states (an injection
# from any of them would show as a state of its own), and one for each field that does.
GROUPS = {"every-other-field": [f for f in FIELDS if f not in CHOICES], **{f: [f] for f in sorted(CHOICES)}}


def states(mods, pillar):
    rendered = mods["state.show_sls"](",".join(SLS), pillar=pillar)
    assert isinstance(rendered, dict), rendered
    return {sid: next(k for k in body if not k.startswith("__")) + "." +
            next(a for a in body[next(k for k in body if not k.startswith("__"))] if isinstance(a, str))
            for sid, body in rendered.items()}, rendered


@pytest.fixture(scope="module", params=["dom0", "template", "proxy", "node"])
def minion(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "dom0":
        db = tmp / "qubes.json"
        qubes_db.new_db(str(db), installed=("debian-13-xfce",))   # so fromrepo is rendered too
        env = SaltEnv(tmp / "s", minion_id="dom0", extra_module_dirs=[TESTS / "emulation/qubes"],
                      opts={"qvm_emulation_db": str(db), "qvm_emulation_version": "4.2"})
    else:
        qtype = {"template": {"qubes": {"type": "template"}}, "proxy": {"qubes": {"type": "app"}}}.get(request.param, {})
        env = SaltEnv(tmp / "s", pillar=qtype, minion_id={"template": "cjdns-gw", "proxy": "sys-cjdns"}.get(request.param, "node1"))
    mods = env.loader()[0]
    extra = mods.opts["pillar"]
    baseline, _ = states(mods, {**extra, **with_value(["qubes.clients"], "personal")})
    return request.param, mods, extra, baseline


@pytest.mark.parametrize("group", GROUPS)
def test_a_hostile_pillar_value_stays_a_value(minion, group):
    kind, mods, extra, baseline = minion
    fields = GROUPS[group]
    got, rendered = states(mods, {**extra, **with_value(fields, HOSTILE)})
    assert "cjdns-injected" not in got
    extra_ids = set(got) - set(baseline) - {"cjdns-nothing-for-this-qube"}
    assert not extra_ids, extra_ids
    if group not in CHOICES:
        assert set(got) == set(baseline), set(baseline) ^ set(got)
    assert all(got[sid] == baseline[sid] for sid in got if sid in baseline), {
        sid: (baseline[sid], got[sid]) for sid in got if sid in baseline and got[sid] != baseline[sid]}
    if kind == "dom0" and any(f.startswith("qubes.") and f != "qubes.service_flag" for f in fields):
        assert holds(rendered, HOSTILE), group


def holds(tree, value) -> bool:
    if isinstance(tree, dict):
        return any(holds(v, value) for v in tree.values())
    if isinstance(tree, list):
        return any(holds(v, value) for v in tree)
    return tree == value
