"""``python -m fedsim report DIR... [--baseline key=value] [--metric M] [--group-by KEY] [--target T]``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from fedsim.errors import ConfigError
from fedsim.experiments.report import ReportOptions, build_report
from fedsim.experiments.report_files import STAT_TITLES, write_report
from fedsim.experiments.runs import load_runs


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, like every fedsim input error
        raise ConfigError(f"report: {message} (see python -m fedsim report --help)")


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fedsim report``."""
    p = _Parser(prog="python -m fedsim report", description="Statistics over seeds for run and sweep directories.")
    p.add_argument("dirs", nargs="+", help="run directories and/or folders of runs (a sweep directory)")
    p.add_argument(
        "--metric",
        action="append",
        help="per-round metric (default test_accuracy); repeat to plot more; the first is tabled",
    )
    p.add_argument(
        "--group-by",
        action="append",
        default=[],
        help="group by these config keys (default: every key that differs, seed excluded)",
    )
    p.add_argument(
        "--baseline", action="append", default=[], help="key=value selecting the baseline runs, e.g. strategy=fedavg"
    )
    p.add_argument(
        "--compare", choices=list(STAT_TITLES), default="final", help="figure compared to the baseline (default final)"
    )
    p.add_argument("--last", type=int, default=5, help="k of 'mean of the last k evaluations' (default 5)")
    p.add_argument("--target", type=float, help="report the rounds each run needed to reach this value of the metric")
    p.add_argument("--out", help="folder for report.md/.csv/.png (default: the directory given, or ./report)")
    return p


def cmd_report(args: list[str]) -> int:
    """``python -m fedsim report``: write report.md, report.csv and report.png; returns the exit code."""
    ns = parser().parse_args(args)
    if ns.last < 1:
        raise ConfigError(f"--last {ns.last} is invalid: expected an integer >= 1")
    out = Path(ns.out) if ns.out else Path(ns.dirs[0]) if len(ns.dirs) == 1 else Path("report")
    options = ReportOptions(
        ns.metric or ["test_accuracy"], ns.group_by, ns.baseline, ns.target, ns.last, ns.compare, out
    )
    report = build_report(load_runs(ns.dirs), options)
    folder, table = write_report(report, ns.dirs)
    print(table)
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(f"report: {folder / 'report.md'}, {folder / 'report.csv'}, {folder / 'report.png'}")
    return 0
