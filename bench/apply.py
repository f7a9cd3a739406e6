"""Row 3: a second (no-op) `state.apply cjdns.proxy` in the emulated sys-cjdns against a trivial
one-state `state.apply` in the same qube, both over the same transport.

The Lab (tests/support/qubes_lab.py) builds dom0, the template cjdns-gw and sys-cjdns, Debian 13
systems booted under their own systemd (systemd-nspawn); cjdns.dom0, cjdns.template and
cjdns.proxy are applied once for real, as test_qubes_booted does. sys-cjdns then stays up, with
cjdroute running under its real systemd, and the timed runs are salt-ssh from the emulated
management DispVM (tests/support/qubesctl.py) into it, one DispVM configuration for both:

* product: `state.apply cjdns.proxy`;
* baseline: `state.apply trivial`, one test.succeed_without_changes state from a directory of
  its own added to the DispVM's file_roots after the formula's.

Same pillar (sys-cjdns's, rendered by dom0 once before the timed runs, not in them), same
file_roots and extension modules, same qube, same Salt thin; both are warmed up once (thin and
ext_mods copied, caches filled). The difference is the formula's render and state work.
A third figure, `salt-ssh test.true`, shows the transport's own fixed cost.
"""

import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import yaml

from common import Row, median, seconds, timed
from support.qubes_lab import Lab, containers_work  # noqa: E402 (common puts tests/ on sys.path)
from support.qubesctl import ManagementDispVM
from support.saltenv import SaltResult, changed

REPS = 5
TARGET = 1.3
NAME = "3. No-op re-apply of cjdns.proxy in sys-cjdns"
TRIVIAL_SLS = "trivial:\n  test.succeed_without_changes\n"
QUBE = "sys-cjdns"


def _ok(result: Any, what: str) -> Any:
    if result.rc != 0 or not isinstance(result.data, dict):
        raise RuntimeError(f"{what} failed (rc {result.rc}): {result.stdout[-1500:]}{result.stderr[-1500:]}")
    return result


class BenchDispVM(ManagementDispVM):
    """The Lab's DispVM configuration plus the trivial SLS's directory; pillar rendered once."""

    def __init__(self, base: Path, lab: Lab, trivial_root: Path) -> None:
        super().__init__(base, lab.dom0, lab.dispvm.qubes_dir)
        master = yaml.safe_load((self.conf / "master").read_text())
        master["file_roots"]["base"].append(str(trivial_root))
        (self.conf / "master").write_text(yaml.safe_dump(master))
        self._rendered: set[str] = set()

    def render_pillar(self, qube: str) -> dict[str, Any]:
        if qube in self._rendered:
            return {}
        self._rendered.add(qube)
        return super().render_pillar(qube)


class Setup:
    def __init__(self, workdir: str) -> None:
        self.lab = lab = Lab(Path(workdir) / "lab")
        _ok(lab.apply("dom0", "cjdns.dom0"), "cjdns.dom0")
        _ok(lab.apply("template", "cjdns.template"), "cjdns.template")
        lab.template.shutdown()
        lab.proxy.boot()
        _ok(lab.apply("proxy", "cjdns.proxy"), "first cjdns.proxy")
        roots = lab.dir / "trivial-roots"
        roots.mkdir()
        (roots / "trivial.sls").write_text(TRIVIAL_SLS)
        self.disp = BenchDispVM(lab.dir / "disp-bench", lab, roots)
        self.disp.render_pillar(QUBE)
        if lab.proxy.run(["systemctl", "is-active", "cjdns"]).stdout.strip() != "active":
            raise RuntimeError("cjdns is not running in sys-cjdns after cjdns.proxy")

    def salt_ssh(self, *args: str) -> SaltResult:
        return self.disp.salt_ssh(QUBE, *args)

    def proxy_noop(self) -> Any:
        result = _ok(self.salt_ssh("state.apply", "cjdns.proxy"), "cjdns.proxy re-apply")
        if changed(result.data):
            raise RuntimeError(f"the re-apply of cjdns.proxy changed something: {changed(result.data)}")
        return result

    def trivial_apply(self) -> Any:
        result = _ok(self.salt_ssh("state.apply", "trivial"), "trivial state.apply")
        if len(result.data) != 1:
            raise RuntimeError(f"the trivial SLS ran {len(result.data)} states")
        return result

    def transport(self) -> Any:
        result = self.salt_ssh("test.true")
        if result.rc != 0 or result.data is not True:
            raise RuntimeError(f"salt-ssh test.true failed (rc {result.rc}): {result.stderr[-1500:]}")
        return result


def signed(value: float) -> str:
    return ("-" if value < 0 else "+") + seconds(abs(value))


def slowest_states(data: dict, count: int = 3) -> str:
    states = sorted(data.values(), key=lambda r: r.get("duration", 0), reverse=True)[:count]
    return ", ".join(f"{r['__id__']} {r.get('duration', 0):.0f} ms" for r in states)


def run(cj: ModuleType, profile: bool = True) -> list[Row]:
    del cj, profile  # row 3 runs the checkout through salt-ssh; its notes name the slow states
    if not containers_work():
        return [Row(NAME, "-", "-", None, TARGET, status="skipped (needs root, systemd-nspawn, debootstrap)")]
    workdir = tempfile.mkdtemp(prefix="cjdns-bench-lab-")
    setup = None
    try:
        setup = Setup(workdir)
        for warm in (setup.transport, setup.proxy_noop, setup.trivial_apply):  # thin, ext_mods, caches
            warm()
        products, baselines, transports = [], [], []
        last: Any = None
        for rep in range(REPS):
            steps: list[tuple[list[float], Callable[[], Any]]] = [
                (products, setup.proxy_noop), (baselines, setup.trivial_apply)]
            for times, func in steps if rep % 2 == 0 else reversed(steps):
                elapsed, result = timed(func)
                times.append(elapsed)
                last = result if func == setup.proxy_noop else last
            transports.append(timed(setup.transport)[0])
        ratios = [p / b for p, b in zip(products, baselines)]
    except Exception as error:  # report the row as failed, keep the other rows
        reason = " ".join(str(error).split())[:300].replace("|", "/")  # one table cell
        return [Row(NAME, "-", "-", None, TARGET, status=f"error: {reason}")]
    finally:
        if setup is not None:
            setup.lab.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    product, baseline, transport = median(products), median(baselines), median(transports)
    state_ms = sum(r.get("duration", 0) for r in last.data.values())
    return [Row(
        NAME, seconds(product), f"{seconds(baseline)} (one-state state.apply, same qube, salt-ssh)",
        median(ratios), TARGET,
        notes=[f"row 3: {REPS} reps; per-rep ratios {', '.join(f'{r:.2f}' for r in ratios)}",
               f"row 3: salt-ssh `test.true` into the same qube (transport and Salt's start-up alone) "
               f"takes {seconds(transport)}; against it the product is {signed(product - transport)} "
               f"and the baseline {signed(baseline - transport)} (medians)",
               f"row 3: the states of the last timed apply ran {len(last.data)} states in "
               f"{seconds(state_ms / 1000)} (Salt's durations); slowest: {slowest_states(last.data)}",
               "row 3: sys-cjdns ran under its own systemd (booted with systemd-nspawn); the "
               "formula's systemctl calls are real ones"],
    )]
