"""`make bench`: the formula's performance as ratios against baselines measured in the same run.

Writes bench/results.md and prints the same. Rows that miss their target are profiled
(in-process rows only) into bench/out/profile-*.txt.

    .venv/bin/python bench/run.py [--only 1,2,3,4,5,6] [--module path/to/cjdns.py] [--no-profile]

--module runs the in-process rows (1, 2, 4) against another copy of _modules/cjdns.py, to try
a fix before it goes into the checkout; row 3 always runs the checkout through salt-ssh, and
rows 5 and 6 (the fleet ext_pillar, _pillar/cjdns_fleet.py) always run the checkout's.
"""

import argparse
import cProfile
import io
import pathlib
import pstats
import sys
import time
from types import ModuleType
from typing import Callable

from common import BENCH, OUT, REPO, Row, load_cjdns, machine_info, markdown_table

import apply  # noqa: E402 (after common: sys.path)
import fleet
import keygen
import merge
import peerstats

RESULTS = BENCH / "results.md"


def profile(name: str, target: Callable[[], None]) -> pathlib.Path:
    profiler = cProfile.Profile()
    profiler.enable()
    target()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    OUT.mkdir(exist_ok=True)
    path = OUT / f"profile-{name}.txt"
    path.write_text(out.getvalue())
    return path


def profiles_for_misses(cj: ModuleType, rows: list[Row]) -> list[str]:
    """Profile one product run of each in-process row that missed its target."""
    made = []
    for row in rows:
        if row.status != "MISS":
            continue
        number = row.name.split(".", 1)[0]
        target: Callable[[], None] | None = {
            "1": lambda: keygen.profile_target(cj),
            "2": lambda: merge.profile_target(cj),
            "2b": lambda: merge.profile_target(cj, 10000),
            "4": lambda: peerstats.profile_target(cj),
            "5": lambda: fleet.profile_target("5"),
            "6": lambda: fleet.profile_target("6"),
        }.get(number)
        if target is not None:
            made.append(f"row {number}: {profile(number, target()).relative_to(REPO)}")
    return made


def report(rows: list[Row], sections: list[str], notes: list[str], elapsed: float) -> str:
    machine = markdown_table(["Machine", ""], [[k, v] for k, v in machine_info()])
    results = markdown_table(
        ["Benchmark", "Product (median)", "Baseline (median)", "Ratio", "Target", "Result"],
        [[r.name, r.measured, r.baseline, r.ratio_text, f"<= {r.target:g}x", r.status] for r in rows],
    )
    parts = [
        "# cjdns-formula benchmarks",
        "Made by `make bench` (bench/run.py; what each row measures: bench/README.md). The figure that "
        "counts is the ratio to a baseline measured in the same run: the median of the per-repetition "
        "ratios. Times are medians, shown for context only.",
        "## Machine", machine,
        "## Results", results,
        *sections,
        "## Notes", "\n".join(f"- {n}" for n in [*notes, f"whole run: {elapsed:.0f} s"]),
    ]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="1,2,3,4,5,6", help="rows to run, e.g. 1,4")
    parser.add_argument("--module", type=pathlib.Path, help="another cjdns.py for rows 1, 2, 4")
    parser.add_argument("--no-profile", action="store_true", help="do not profile rows that miss")
    options = parser.parse_args(argv)
    only = set(options.only.split(","))
    cj = load_cjdns(options.module)
    started = time.perf_counter()
    rows: list[Row] = []
    sections: list[str] = []
    if "1" in only:
        rows += keygen.run(cj)
    if "2" in only:
        merge_rows, merge_sections = merge.run(cj)
        rows += merge_rows
        sections += merge_sections
    if "3" in only:
        rows += apply.run(cj, profile=not options.no_profile)
    if "4" in only:
        rows += peerstats.run(cj)
    if only & {"5", "6"}:
        fleet_rows, fleet_sections = fleet.run()
        rows += [row for row in fleet_rows if row.name.split(".", 1)[0] in only]
        sections += fleet_sections if "6" in only else []
    notes = [n for r in rows for n in r.notes]
    if options.module:
        notes.insert(0, f"rows 1, 2, 4 ran against {options.module}, not the checkout's _modules/cjdns.py")
    if not options.no_profile:
        notes += [f"profile of a missed {p}" for p in profiles_for_misses(cj, rows)]
    text = report(rows, sections, notes, time.perf_counter() - started)
    RESULTS.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
