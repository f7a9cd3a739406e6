"""A plain Debian 13 minion for cjdns.node: a booted system under its own systemd, no Qubes pillar.

The machine is a `Template` of tests/emulation/qube.py used as a plain persistent Debian 13
system (root volume kept across boots). Its root filesystem also carries the emulated
qubes-core-agent, which is harmless here: the formula decides where it runs from pillar
`qubes:type` alone, and this machine's pillar has no `qubes` key. (The agent's boot units still
run: /run/qubes-service flags of a TemplateVM, /home and /usr/local bound from /rw.)

It is reached as a salt-ssh minion is: real salt-ssh with the formula's file_roots and a
pillar rendered per target beforehand (tests/support/qubesctl.py's ManagementDispVM, whose
transport is the qube's root shell), the formula's modules running on the machine's own
/usr/bin/python3. Upstream cjdns is the fake repository (fake_cjdns_repo.py), bound into the
machine at the same path and cloned over file://.
"""

from pathlib import Path

from support.qubes_lab import PILLAR_EXAMPLE, QUBE_PYTHON, Template, deep_merge, make_repo
from support.qubesctl import ManagementDispVM
from support.saltenv import SaltEnv, SaltResult


class NodeLab:
    """One plain minion `name` under workdir; pillar = pillar.example + a file:// source + overrides."""

    def __init__(self, workdir: Path, pillar: dict | None = None, name: str = "node1") -> None:
        self.dir = Path(workdir)
        upstream = self.dir / "upstream"
        upstream.mkdir(parents=True, exist_ok=True)
        self.repo = make_repo(upstream / "cjdns", python=QUBE_PYTHON)
        base = deep_merge(PILLAR_EXAMPLE, {"cjdns": {"install": {"source": {
            "repo": f"file://{self.repo}", "proxy": "", "build_deps": ["git"]}}}})
        self.pillar = deep_merge(base, pillar or {})
        # Renders the target's pillar (as a salt master would) and lends its file_roots.
        self.master = SaltEnv(self.dir / "salt-master", pillar=self.pillar, minion_id="salt-master")
        machines = self.dir / "machines"
        self.machine = Template(name, machines, shared=[upstream])
        self.ssh = ManagementDispVM(self.dir / "salt-ssh", self.master, machines)

    def set_pillar(self, pillar: dict) -> None:
        """Replace the whole pillar of the minion."""
        self.master.set_pillar(pillar)

    def call(self, *args: str, log_level: str = "quiet") -> SaltResult:
        """`salt-ssh node1 ARGS` (boots the machine if needed)."""
        self.machine.boot()
        return self.ssh.salt_ssh(self.machine.name, *args, log_level=log_level)

    def apply(self, *args: str, log_level: str = "quiet") -> SaltResult:
        return self.call("state.apply", *args, log_level=log_level)

    def cleanup(self) -> None:
        self.machine.cleanup()
