"""Row 3: a second (no-op) `state.apply cjdns.proxy` in the emulated sys-cjdns against a trivial
one-state `state.apply` in the same qube.

The Lab (tests/support/qubes_lab.py) builds dom0, the template cjdns-gw and sys-cjdns in
mount namespaces; cjdns.template and cjdns.proxy are applied once for real. The timed runs
then use two minion configs inside sys-cjdns that differ only in file_roots:

* formula: file_roots holds just the formula (cjdns/, _modules/, _states/ linked from the
  checkout), as in a real install (/srv/formulas/...);
* trivial: file_roots is a directory of its own with `trivial.sls`, one
  test.succeed_without_changes state.

Both have the same pillar (the Lab's sys-cjdns pillar), minion id, module_dirs and Salt, and
are warmed up once, so the difference is the formula's own render and state work.
For reference the Lab's own minion config (file_roots = the whole checkout) is timed too,
and the emulated systemctl's share is estimated (it is a Python script, ~10x slower than
the real one).
"""

import io
import os
import pathlib
import pstats
import re
import shutil
import sys
import tempfile
from types import ModuleType
from typing import Any, Callable

import yaml

from common import OUT, REPO, Row, median, seconds, timed
from support.qubes_lab import Lab, namespaces_work  # noqa: E402 (common puts tests/ on sys.path)
from support.saltenv import SaltEnv, changed

REPS = 5
TARGET = 1.3
NAME = "3. No-op re-apply of cjdns.proxy in sys-cjdns"
TRIVIAL_SLS = "trivial:\n  test.succeed_without_changes\n"


def _ok(result: Any, what: str) -> Any:
    if result.rc != 0 or not isinstance(result.data, dict):
        raise RuntimeError(f"{what} failed (rc {result.rc}): {result.stdout[-1500:]}{result.stderr[-1500:]}")
    return result


class Setup:
    def __init__(self, workdir: str) -> None:
        self.lab = Lab(os.path.join(workdir, "lab"))
        lab = self.lab
        _ok(lab.apply("template", "cjdns.template"), "cjdns.template")
        lab.template.shutdown()
        _ok(lab.apply("proxy", "cjdns.proxy"), "first cjdns.proxy")
        pillar = yaml.safe_load((lab.proxy_salt.pillar_dir / "test.sls").read_text())
        formula = lab.dir / "formula"
        formula.mkdir()
        for part in ("cjdns", "_modules", "_states"):
            os.symlink(REPO / part, formula / part)
        roots = lab.dir / "trivial-roots"
        roots.mkdir()
        (roots / "trivial.sls").write_text(TRIVIAL_SLS)
        self.formula = SaltEnv(lab.dir / "salt-sys-cjdns-formula", pillar=pillar, minion_id="sys-cjdns",
                               opts={"file_roots": {"base": [str(formula)]}})
        self.trivial = SaltEnv(lab.dir / "salt-sys-cjdns-trivial", pillar=pillar, minion_id="sys-cjdns",
                               opts={"file_roots": {"base": [str(roots)]}})

    def run(self, argv: list[str]) -> Any:
        return self.lab.proxy.run(argv, timeout=300)

    def proxy_noop(self, env: SaltEnv) -> Callable[[], Any]:
        def apply() -> Any:
            result = _ok(env.call("state.apply", "cjdns.proxy", runner=self.run), "cjdns.proxy re-apply")
            if changed(result.data):
                raise RuntimeError(f"the re-apply of cjdns.proxy changed something: {changed(result.data)}")
            return result
        return apply

    def trivial_apply(self) -> Any:
        return _ok(self.trivial.call("state.apply", "trivial", runner=self.run), "trivial state.apply")

    def systemctl_share(self) -> tuple[int, float]:
        """(systemctl runs in one no-op apply, extra seconds per run of the emulated systemctl)."""
        log = self.formula.log_file
        before = log.stat().st_size if log.exists() else 0
        self.lab.load_qubes_firewall()
        self.proxy_noop(self.formula)()
        with open(log, encoding="utf-8", errors="replace") as handle:
            handle.seek(before)
            calls = len(re.findall(r"Executing command \S*systemctl\b", handle.read()))
        emulated = median([timed(lambda: self.run(["systemctl", "is-active", "cjdns"]))[0] for _ in range(5)])
        spawn = median([timed(lambda: self.run(["true"]))[0] for _ in range(5)])
        return calls, max(emulated - spawn, 0.0)

    def profile(self) -> pathlib.Path:
        """cProfile of one no-op apply (salt-call run under cProfile in the qube) as text."""
        raw = self.lab.dir / "proxy-apply.prof"
        self.lab.load_qubes_firewall()
        argv = [sys.executable, "-m", "cProfile", "-o", str(raw), *self.formula.command("state.apply", "cjdns.proxy")]
        self.run(argv)
        out = io.StringIO()
        stats = pstats.Stats(str(raw), stream=out)
        stats.sort_stats("cumulative").print_stats(60)
        stats.sort_stats("tottime").print_stats(25)
        OUT.mkdir(exist_ok=True)
        path = OUT / "profile-3.txt"
        path.write_text(out.getvalue())
        return path


def slowest_states(data: dict, count: int = 3) -> str:
    states = sorted(data.values(), key=lambda r: r.get("duration", 0), reverse=True)[:count]
    return ", ".join(f"{r['__id__']} {r.get('duration', 0):.0f} ms" for r in states)


def run(cj: ModuleType, profile: bool = True) -> list[Row]:
    if not namespaces_work():
        return [Row(NAME, "-", "-", None, TARGET, status="skipped (needs root)")]
    workdir = tempfile.mkdtemp(prefix="cjdns-bench-lab-")
    setup = None
    try:
        setup = Setup(workdir)
        lab = setup.lab
        lab_env = setup.proxy_noop(lab.proxy_salt)
        formula_env = setup.proxy_noop(setup.formula)
        for warm in (lab_env, formula_env, setup.trivial_apply):  # caches: grains, fileserver, pyc
            lab.load_qubes_firewall()
            warm()
        products, baselines, lab_times = [], [], []
        last: Any = None
        for rep in range(REPS):
            lab.load_qubes_firewall()  # the Lab does this before every proxy apply; untimed
            steps: list[tuple[list[float], Callable[[], Any]]] = [
                (products, formula_env), (baselines, setup.trivial_apply)]
            for times, func in steps if rep % 2 == 0 else reversed(steps):
                elapsed, result = timed(func)
                times.append(elapsed)
                last = result if func is formula_env else last
            lab.load_qubes_firewall()
            lab_times.append(timed(lab_env)[0])
        calls, per_call = setup.systemctl_share()
        ratios = [p / b for p, b in zip(products, baselines)]
        profiled = setup.profile() if profile and median(ratios) > TARGET else None
    except Exception as error:  # report the row as failed, keep the other rows
        reason = " ".join(str(error).split())[:300].replace("|", "/")  # one table cell
        return [Row(NAME, "-", "-", None, TARGET, status=f"error: {reason}")]
    finally:
        if setup is not None:
            setup.lab.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    product, baseline = median(products), median(baselines)
    emulator = calls * per_call
    extra = [f"profile of a missed row 3: {profiled.relative_to(REPO)}"] if profiled else []
    return [Row(
        NAME, seconds(product), f"{seconds(baseline)} (one-state state.apply, same qube)",
        median(ratios), TARGET,
        notes=[f"row 3: {REPS} reps; per-rep ratios {', '.join(f'{r:.2f}' for r in ratios)}",
               f"row 3: with the Lab's own minion config (file_roots = the whole checkout, .venv included) "
               f"the same apply takes {seconds(median(lab_times))} = {median(lab_times) / baseline:.2f}x",
               f"row 3: the apply runs systemctl {calls} times; the emulated systemctl costs {seconds(per_call)} "
               f"more per run than spawning `true`; without that share the ratio would be "
               f"{(product - emulator) / baseline:.2f}x (estimate)",
               f"row 3: slowest states of the last timed apply: {slowest_states(last.data)}", *extra],
    )]
