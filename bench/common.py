"""Shared parts of the benchmarks: paths, loading the module, timing, the result rows."""

import datetime
import importlib.util
import os
import pathlib
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
TESTS = REPO / "tests"
EMULATION = TESTS / "emulation"
VECTORS = TESTS / "vectors"
OUT = BENCH / "out"

for _extra in (TESTS, EMULATION):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))


def load_cjdns(path: pathlib.Path | None = None) -> ModuleType:
    """The execution module as plain Python: the checkout's, or another file (to try a fix)."""
    if path is None:
        from support.saltenv import load_module

        return load_module()
    spec = importlib.util.spec_from_file_location("cjdns_bench_alt", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cjdns_bench_alt"] = module
    spec.loader.exec_module(module)
    return module


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = func()
    return time.perf_counter() - started, result


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Row:
    """One line of the results table. ratio None means not measured (skipped or failed)."""

    name: str
    measured: str
    baseline: str
    ratio: float | None
    target: float
    status: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.status:
            self.status = "PASS" if self.ratio is not None and self.ratio <= self.target else "MISS"

    @property
    def ratio_text(self) -> str:
        return "-" if self.ratio is None else f"{self.ratio:.2f}x"


def seconds(value: float) -> str:
    """A duration for humans (the table's figures are the ratios; these are context)."""
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} us"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def salt_version() -> str:
    try:
        import salt.version

        return salt.version.__version__
    except ImportError:
        return "not installed"


def machine_info() -> list[tuple[str, str]]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        ("Date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("CPU", cpu_model()),
        ("Cores", f"{usable} usable ({os.cpu_count()} online)"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("Salt", salt_version()),
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
