"""cjdns.node on a plain Debian minion (no Qubes pillar), emulated in a mount namespace."""

import json

import pytest

from support.qubes_lab import PILLAR_EXAMPLE, Template, deep_merge, make_repo, namespaces_work, wait_for_output
from support.saltenv import SaltEnv, changed, load_module, state_results

pytestmark = pytest.mark.skipif(not namespaces_work(), reason="needs root, mount namespaces and overlayfs")
cj = load_module()


@pytest.fixture
def node(tmp_path):
    repo = make_repo(tmp_path / "upstream")
    pillar = deep_merge(PILLAR_EXAMPLE, {"cjdns": {"install": {"source": {
        "repo": f"file://{repo}", "proxy": "http://should-not-be-used.invalid:1", "build_deps": ["git"]}}}})
    machine = Template("node1", tmp_path / "machines", shared=[tmp_path])
    env = SaltEnv(tmp_path / "salt", pillar=pillar, minion_id="node1")
    yield machine, env
    machine.cleanup()


def apply(machine, env, *args):
    return env.call("state.apply", *args, runner=lambda argv: machine.run(argv, timeout=300))


def test_node_first_apply_second_apply_and_dry_run(node):
    machine, env = node
    dry = apply(machine, env, "cjdns.node", "test=True")
    assert dry.rc == 0, dry.stdout[-2000:]
    assert machine.run(["test", "-e", "/etc/cjdns/cjdroute.conf"]).returncode == 1
    first = apply(machine, env, "cjdns.node")
    assert first.rc == 0, first.stdout[-3000:]
    assert {r["__id__"] for r in state_results(dry.data) if r["result"] is None} == set(changed(first.data))
    host = machine.testinfra_host()
    assert host.file("/etc/cjdns/cjdroute.conf").mode == 0o600
    unit = host.file("/etc/systemd/system/cjdns.service").content_string
    assert "qubes-service" not in unit and "qubes-sysinit" not in unit
    assert host.run("systemctl is-active cjdns").stdout.strip() == "active"
    assert host.run("systemctl is-enabled cjdns").stdout.strip() == "enabled"
    second = apply(machine, env, "cjdns.node")
    assert second.rc == 0 and changed(second.data) == {}
    wait_for_output(machine, ["ip", "-6", "addr", "show", "dev", "tun0"], "inet6 fc")
    status = env.call("cjdns.status", runner=lambda argv: machine.run(argv))
    assert status.data["admin"]["reachable"] and status.data["address_up"], status.data
    assert status.data["peers"]["total"] == 2


def test_node_sls_refuses_a_qubes_template(node):
    machine, env = node
    env.set_pillar({"qubes": {"type": "template"}})
    result = apply(machine, env, "cjdns.node")
    assert result.rc == 2 and "runs in a plain minion without Qubes" in json.dumps(result.data)
    assert machine.run(["test", "-e", "/etc/cjdns"]).returncode == 1
