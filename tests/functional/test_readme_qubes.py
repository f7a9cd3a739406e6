"""The README's Qubes section, command by command, on the emulated Qubes host.

The commands are read from README.md (its ```sh blocks under "Applying it in Qubes" and the
qubesctl ones under "Checking the node") and run with bash as written, except that dom0's
/srv and /tmp live under a test directory and `sudo` is dropped (the test runs as root).
dom0 is salt-call --local with a Qubes-like config and the qvm test double; `qubesctl`,
`qvm-run` and `top.enable` are the emulations in tests/emulation/dom0/bin; the template and
sys-cjdns are booted Debian 13 qubes reached by salt-ssh (tests/emulation/qube.py)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.qubes_lab import (EMULATION, PILLAR_EXAMPLE, QUBE_PYTHON, AppVM, Template, containers_work,
                               deep_merge, make_repo, qubes_db)
from support.saltenv import REPO, TESTS, load_module

pytestmark = [pytest.mark.booted,
              pytest.mark.skipif(not containers_work(), reason="needs root, systemd-nspawn and debootstrap")]
cj = load_module()
README = (REPO / "README.md").read_text()
DOM0_BIN = TESTS / "emulation" / "dom0" / "bin"


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def sh_blocks(text: str) -> list[str]:
    return [line for block in re.findall(r"```sh\n(.*?)```", text, re.S)
            for line in block.splitlines() if line.strip()]


APPLY = sh_blocks(section("Applying it in Qubes").split("### What each part does")[0])
CHECK = [line for line in sh_blocks(section("Checking the node")) if "qubesctl" in line]


def test_the_readme_lists_the_steps_this_test_runs():
    joined = "\n".join(APPLY)
    for needed in ("qubesctl saltutil.sync_all", "top.enable cjdns pillar=True",
                   "qubesctl state.apply cjdns.dom0",
                   "--targets=cjdns-gw state.apply cjdns.template",
                   "--targets=sys-cjdns state.apply cjdns.proxy"):
        assert needed in joined
    assert CHECK


class Dom0Host:
    """dom0's file system under one directory, configured as a Qubes dom0 (qubes-mgmt-salt)."""

    def __init__(self, base: Path) -> None:
        self.root = base / "dom0"
        self.tmp = self.root / "tmp"
        for sub in ("srv/salt", "srv/user_salt", "srv/pillar/base", "srv/user_pillar", "etc/salt", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.db = str(base / "qubes.json")
        qubes_db.new_db(self.db, version="4.3")
        qubes_db.Qubesd(self.db).run_tool("/usr/bin/qvm-create personal --class=AppVM --label=yellow")
        # Qubes' own pillar about each qube (qubes-mgmt-salt's ext_pillar), here an enabled top.
        srv = self.root / "srv"
        top: dict = {"base": {}}
        for qube, qtype, template in (("cjdns-gw", "template", ""), ("sys-cjdns", "app", "cjdns-gw")):
            sls = f"qubes-emulation-{qube}"
            (srv / "pillar/base" / f"{sls}.sls").write_text(
                yaml.safe_dump({"qubes": {"type": qtype, "template": template}}))
            top["base"][qube] = [sls]
        (srv / "pillar/_tops/base").mkdir(parents=True)
        (srv / "pillar/base/qubes-emulation.top").write_text(yaml.safe_dump(top))
        (srv / "pillar/_tops/base/qubes-emulation.top").symlink_to(srv / "pillar/base/qubes-emulation.top")
        (srv / "pillar/top.sls").write_text(yaml.safe_dump(top))
        config = {
            "id": "dom0", "file_client": "local", "root_dir": str(self.root),
            "file_roots": {"base": [str(srv / "salt")], "user": [str(srv / "user_salt")]},
            "pillar_roots": {"base": [str(srv / "pillar"), str(srv / "pillar/base")],
                             "user": [str(srv / "user_pillar")]},
            "module_dirs": [str(EMULATION / "qubes")],  # Qubes' qvm module (the test double)
            "qvm_emulation_db": self.db, "qvm_emulation_version": "4.3",
            "enable_fqdns_grains": False, "log_level_logfile": "debug", "state_output": "changes",
        }
        (self.root / "etc/salt/minion").write_text(yaml.safe_dump(config))

    def command(self, line: str) -> str:
        """A README line as it runs here: dom0's /srv and /tmp under the test's root, no sudo."""
        line = re.sub(r"\bsudo ", "", line)
        return re.sub(r"(?<![\w/.-])/(srv|tmp)/", lambda m: f"{self.root}/{m.group(1)}/", line)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("readme")
    dom0 = Dom0Host(base)
    upstream = base / "upstream"
    upstream.mkdir()
    repo = make_repo(upstream / "cjdns", python=QUBE_PYTHON)
    qubes = base / "qubes"
    template = Template("cjdns-gw", qubes, shared=[upstream])
    proxy = AppVM("sys-cjdns", qubes, template, services={"cjdns"}, vm_type="ProxyVM", shared=[upstream])
    home = base / "home" / "work"
    home.mkdir(parents=True)
    (home / "cjdns-formula").symlink_to(REPO)
    # qubesctl runs on the test venv's Python (dom0's Salt: Qubes' version and patches).
    env = {**os.environ, "PATH": f"{DOM0_BIN}:{Path(sys.executable).parent}:{os.environ['PATH']}", "QUBES_DOM0_ROOT": str(dom0.root),
           "QUBES_EMULATION_RUN": str(qubes), "QVM_RUN_HOME": str(base / "home")}
    yield {"dom0": dom0, "template": template, "proxy": proxy, "repo": repo, "env": env}
    proxy.cleanup()
    template.cleanup()


def run(host, line):
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", host["dom0"].command(line)], env=host["env"],
                          capture_output=True, text=True, timeout=900)
    return proc


def edit_pillar(host):
    """What the user does at "then edit it": the lab's upstream and build tools, one client."""
    path = host["dom0"].root / "srv/pillar/base/cjdns.sls"
    pillar = yaml.safe_load(path.read_text())
    assert pillar == PILLAR_EXAMPLE
    pillar = deep_merge(pillar, {"cjdns": {
        "qubes": {"clients": ["personal"]},
        "install": {"source": {"repo": f"file://{host['repo']}", "proxy": "", "build_deps": ["git"]}}}})
    path.write_text(yaml.safe_dump(pillar))


def test_the_readme_commands_install_and_apply_the_formula(host):
    for line in APPLY:
        if "--targets=cjdns-gw" in line:
            host["template"].boot()  # qrexec starts a halted target; qubesctl stops it after
        if "--targets=sys-cjdns" in line:
            host["template"].shutdown()
            host["proxy"].boot()  # autostart
        if "saltutil.sync_all" in line:
            early = run(host, "sudo qubesctl state.apply cjdns.dom0 test=True")
            assert early.returncode != 0
            assert "State 'cjdns.pillar_valid' was not found" in early.stdout + early.stderr
        proc = run(host, line)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        if line.rstrip().endswith("# then edit it"):
            edit_pillar(host)
        if "state.apply" in line:
            assert re.search(r"^Failed: +0$", proc.stdout, re.M), proc.stdout[-3000:]
            if "cjdns-gw" not in line:  # the template's second apply: test_qubes_booted.py
                again = run(host, line)
                assert again.returncode == 0 and "changed=" not in again.stdout, again.stdout[-3000:]
    assert qubes_db.pref(host["dom0"].db, "personal", "netvm") == "sys-cjdns"
    assert host["proxy"].run(["systemctl", "is-active", "cjdns"]).stdout.strip() == "active"
    ipv6 = cj.loads(host["proxy"].path("/etc/cjdns/cjdroute.conf").read_text())["ipv6"]
    for line in CHECK:
        proc = run(host, line)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        if "cjdns.status" in line:
            assert ipv6 in proc.stdout
