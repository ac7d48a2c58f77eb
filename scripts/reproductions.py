"""Reproduction evidence: keep the small outputs of reproduction sweeps and render docs/REPRODUCTIONS.md.

    python scripts/reproductions.py collect runs/sweeps/<timestamp>-repro_fedimpro
    python scripts/reproductions.py render

``collect`` copies each finished run's config.yaml, metrics.jsonl, summary.json and partition.json (no checkpoints)
and the sweep's manifest (manifests/<sweep>.json) into docs/reproductions/<experiment>/. ``render`` runs `fedsim
report` on
those folders for every claim of docs/reproductions/claims.yaml, writes each comparison's
report.md/.csv/.png under docs/reproductions/claim_<id>/, decides the verdict from the paired
95% interval, and writes docs/REPRODUCTIONS.md plus the summary table between the reproduction
markers of README.md. Every number on the page comes from the committed run outputs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import yaml

from fedsim.errors import ConfigError
from fedsim.experiments.report import (
    ReportOptions,
    baseline_runs,
    build_report,
    group_labels,
    lower_is_better,
    paired_difference,
    percent,
    run_figures,
)
from fedsim.experiments.report_files import write_report
from fedsim.experiments.runs import as_text, load_runs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "reproductions"
KEPT = ("config.yaml", "metrics.jsonl", "summary.json", "partition.json")
MIN_SEEDS, MIN_ROUNDS = 3, 50
README_START, README_END = "<!-- reproductions:start -->", "<!-- reproductions:end -->"


def collect(sweep: Path) -> Path:
    manifest = json.loads((sweep / "manifest.json").read_text())
    target = DOCS / manifest["name"]
    target.mkdir(parents=True, exist_ok=True)
    kept = 0
    for job in manifest["jobs"]:
        if job["status"] != "done":
            continue
        out = target / job["run_dir"]
        out.mkdir(exist_ok=True)
        for name in KEPT:
            if (sweep / job["run_dir"] / name).is_file():
                shutil.copy2(sweep / job["run_dir"] / name, out / name)
        kept += 1
    manifests = target / "manifests"  # one per sweep: an experiment may be run in parts (e.g. more seeds later)
    manifests.mkdir(exist_ok=True)
    (manifests / f"{sweep.name}.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{target}: {kept} of {len(manifest['jobs'])} runs kept")
    return target


def verdict(row: dict, claimed_lower: bool, seeds: int, rounds: int, margin: float = 0.0) -> str:
    """From the paired interval of the claimed-better group - baseline, in the direction the claim
    states; with a ``margin``, the claim is "no worse than ``margin``" (non-inferiority)."""
    if seeds < MIN_SEEDS or rounds < MIN_ROUNDS:
        return f"incomplete ({seeds} seeds, {rounds} rounds; the protocol asks {MIN_SEEDS} and {MIN_ROUNDS})"
    sign = -1.0 if claimed_lower else 1.0
    low, high = sorted((sign * row["ci_low"], sign * row["ci_high"]))
    if low > -margin:
        return "reproduced"
    if high < -margin:
        return (
            "not reproduced (the interval excludes 0 the other way)"
            if margin == 0
            else f"not reproduced (the interval lies beyond the margin of {margin:g})"
        )
    return (
        "inconclusive (the interval contains 0)"
        if margin == 0
        else f"inconclusive (the interval crosses the margin of {margin:g})"
    )


def level_check(runs, spec: dict) -> tuple[list[str], str, str]:
    """Whether ``spec['metric']`` of the runs ``spec['runs']`` selects stays within ``spec['margin']`` of
    ``spec['reference']`` measured in the same runs (e.g. an attack's PSNR against a random image's):
    the 95% interval of the per-run difference (last round) must lie below the margin.
    Returns (the section's lines, the summary's figure, the verdict)."""
    mask, _ = baseline_runs(runs.configs, list(spec["runs"]))
    metrics = runs.metrics[runs.metrics["run"].isin(runs.configs.index[mask])]
    value = run_figures(metrics, spec["metric"], 1, None)
    reference = run_figures(metrics, spec["reference"], 1, None)
    both = value[["final", "rounds"]].join(reference["final"].rename("reference")).dropna()
    row = paired_difference(both["final"].to_numpy(), both["reference"].to_numpy())
    seeds, rounds, margin = int(row["pairs"]), int(both["rounds"].min()) if len(both) else 0, float(spec["margin"])
    if seeds < MIN_SEEDS or rounds < MIN_ROUNDS:
        decision = f"incomplete ({seeds} seeds, {rounds} rounds; the protocol asks {MIN_SEEDS} and {MIN_ROUNDS})"
    elif row["ci_high"] < margin:
        decision = "reproduced"
    elif row["ci_low"] > margin:
        decision = f"not reproduced (more than {margin:g} above the reference)"
    else:
        decision = f"inconclusive (the interval crosses the margin of {margin:g})"
    figure = f"{row['diff']:.4g} [{row['ci_low']:.4g}, {row['ci_high']:.4g}] (n={seeds})"
    lines = [
        f"### {spec['label']}",
        "",
        f"`{spec['metric']}` - `{spec['reference']}` in the same runs ({', '.join(spec['runs'])}), "
        f"mean over seeds with its 95% interval: {figure}; the claim holds when the interval lies below {margin:g}.",
        "",
        f"Verdict: **{decision}**.",
        "",
    ]
    return lines, figure, decision


def group_table(runs, spec: dict) -> list[str]:
    """Per run group (the keys its runs differ in): mean +- std over seeds of each of ``spec['metrics']``
    (per run, the mean of its last ``spec['last']`` values)."""
    last = int(spec.get("last", 1))
    values = pd.DataFrame({m: run_figures(runs.metrics, m, last, None)["last"] for m in spec["metrics"]}).dropna(
        how="all"
    )
    if values.empty:
        return []
    labels = group_labels(runs.configs.loc[values.index], [])
    lines = [f"### {spec['title']}", ""] + ([spec["text"].strip(), ""] if spec.get("text") else [])
    lines += [
        "| runs | n | " + " | ".join(f"`{m}`" for m in spec["metrics"]) + " |",
        "|---" * (len(spec["metrics"]) + 2) + "|",
    ]
    for label, frame in values.groupby(labels, sort=False):
        cells = [
            f"{cell(frame[m].mean(), m)} +- {cell(frame[m].std(), m)}" if frame[m].notna().any() else "-"
            for m in spec["metrics"]
        ]
        lines.append(f"| {label} | {len(frame)} | " + " | ".join(cells) + " |")
    return lines + [""]


def matching_group(better: list[str], groups: list[str], configs) -> str | None:
    """The group label holding every ``key=value`` of ``better``, the one naming fewest other options
    where several do (``selection=random`` is the plain group, not ``selection=random, teachers.foreign=[5]``).
    A key that no label names does not vary among the runs (e.g. the runs that would set it otherwise are
    not committed yet): the runs that have it must then all have the wanted value, else nothing matches."""
    named = {item.split("=", 1)[0] for g in groups for item in g.split(", ")}
    for item in better:
        key, value = item.split("=", 1)
        column = f"{key}.name" if f"{key}.name" in configs else key  # a group (partition) means its option
        if key not in named and (column not in configs or value not in set(as_text(configs[[column]])[column]) - {""}):
            return None
    wanted = {item for item in better if item.split("=", 1)[0] in named}
    holding = [g for g in groups if wanted <= set(g.split(", "))]
    return min(holding, key=lambda g: len(g.split(", ")), default=None)


def fmt(value: float, metric: str) -> str:
    return f"{value * 100:.2f}" if percent(metric) else f"{value:.4g}"


def cell(value: float, metric: str) -> str:
    """A table entry: percent points for accuracies, three decimals below 1, two above."""
    if percent(metric):
        return f"{value * 100:.2f}"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


def render_claim(claim: dict) -> tuple[list[str], list[str]]:
    """(the claim's section of REPRODUCTIONS.md, its summary rows)."""
    dirs = [str(DOCS / e) for e in claim["experiments"] if (DOCS / e).is_dir()]
    section = [f"## Claim {claim['id']}: {claim['title']}", "", f"**Paper.** {claim['paper']}", ""]
    section += [
        "**Command.** "
        + "; ".join(f"`python -m fedsim run -m +experiment={e} --jobs 2`" for e in claim["experiments"])
        + " (each file states the proxy's scale-down next to the paper's setting).",
        "",
    ]
    rows = []
    if not dirs:
        section += ["No runs committed yet.", ""]
        return section, [f"| {claim['id']} | {claim['title']} | - | not run yet |"]
    runs = load_runs(dirs)
    for k, comparison in enumerate(claim["comparisons"]):
        metric = comparison["metric"]
        metrics = [metric] + [m for m in claim["metrics"] if m != metric]
        out = (
            DOCS / f"claim_{claim['id']}" / f"{k + 1}-{metric}-vs-{'_'.join(comparison['baseline']).replace('=', '-')}"
        )
        last = int(comparison.get("last", claim["last"]))
        options = ReportOptions(
            metrics, [], list(comparison["baseline"]), None, last, comparison.get("compare", claim["compare"]), out
        )
        better = [comparison["better"]] if isinstance(comparison["better"], str) else list(comparison["better"])
        title = comparison.get("label") or f"{', '.join(better)} vs {' '.join(comparison['baseline'])}"
        title += f", `{metric}`"
        try:
            report = build_report(runs, options)
        except ConfigError as err:  # e.g. the baseline's runs are not there yet
            section += [f"### {title}", "", f"Not run yet ({err}).", ""]
            rows.append(f"| {claim['id']} | {title} | - | not run yet |")
            continue
        _, table = write_report(report, [str(Path(d).relative_to(ROOT)) for d in dirs])
        rows_by_group = report.table.set_index("group")
        label = matching_group(better, list(rows_by_group.index), runs.configs)
        if label is None or "diff" not in rows_by_group:
            decision, ours = "not run yet", "-"
        else:
            row = rows_by_group.loc[label].to_dict()
            seeds, rounds = int(row["pairs"]), int(row["rounds"])
            claimed_lower = comparison.get("claimed", "lower" if lower_is_better(metric) else "higher") == "lower"
            decision = verdict(row, claimed_lower, seeds, rounds, float(comparison.get("margin", 0.0)))
            ours = (
                f"{fmt(row['diff'], metric)} [{fmt(row['ci_low'], metric)}, {fmt(row['ci_high'], metric)}] (n={seeds})"
            )
        image = out.relative_to(DOCS.parent) / "report.png"
        section += [
            f"### {title}",
            "",
            table,
            "",
            f"Verdict: **{decision}**.",
            "",
            f"![{title}]({image.as_posix()})",
            "",
        ]
        for warning in report.warnings:
            section.append(f"- warning: {warning}")
        rows.append(f"| {claim['id']} | {title} | {ours} | {decision} |")
    for spec in claim.get("levels", []):
        try:
            lines, figure, decision = level_check(runs, spec)
        except ConfigError as err:  # the runs it selects are not there yet
            lines, figure, decision = [f"### {spec['label']}", "", f"Not run yet ({err}).", ""], "-", "not run yet"
        section += lines
        rows.append(f"| {claim['id']} | {spec['label']} | {figure} | {decision} |")
    for spec in claim.get("tables", []):
        table_runs = (
            load_runs([str(DOCS / e) for e in spec["experiments"] if (DOCS / e).is_dir()])
            if "experiments" in spec
            else runs
        )
        section += group_table(table_runs, spec)
    notes = DOCS / f"claim_{claim['id']}" / "notes.md"
    if notes.is_file():
        section += ["**Findings.**", "", notes.read_text().strip(), ""]
    return section, rows


def render() -> None:
    claims = yaml.safe_load((DOCS / "claims.yaml").read_text())
    header = [
        "# Reproductions",
        "",
        "Generated by `python scripts/reproductions.py render` from the run outputs committed under",
        "`docs/reproductions/<experiment>/` (config, per-round metrics and summary of every run); do not edit.",
        "Each comparison pairs runs by seed (same seed = same partition and initialisation), reports the",
        "mean difference of the compared figure with its 95% Student-t interval, and decides: **reproduced**",
        "when the interval excludes 0 in the claimed direction, **not reproduced** when it excludes 0 the",
        "other way, **inconclusive** otherwise.",
        "",
    ]
    summary = ["| claim | comparison | ours: paired difference, 95% CI | verdict |", "|---|---|---|---|"]
    body: list[str] = []
    for claim in claims:
        section, rows = render_claim(claim)
        body += section
        summary += rows
    page = header + ["## Summary", "", *summary, "", *body]
    (ROOT / "docs" / "REPRODUCTIONS.md").write_text("\n".join(page).rstrip() + "\n")
    readme = (ROOT / "README.md").read_text()
    if README_START in readme and README_END in readme:
        head, rest = readme.split(README_START, 1)
        _, tail = rest.split(README_END, 1)
        block = "\n".join([README_START, "", *summary, "", README_END])
        (ROOT / "README.md").write_text(head + block + tail)
    print(f"wrote {ROOT / 'docs' / 'REPRODUCTIONS.md'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("collect").add_argument("sweeps", nargs="+", type=Path)
    sub.add_parser("render")
    args = parser.parse_args(argv)
    if args.command == "collect":
        for sweep in args.sweeps:
            collect(sweep)
    else:
        render()
    return 0


if __name__ == "__main__":
    sys.exit(main())
