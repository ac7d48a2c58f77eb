"""Reproduction evidence: keep the small outputs of reproduction sweeps and render docs/REPRODUCTIONS.md.

    python scripts/reproductions.py collect runs/sweeps/<timestamp>-repro_fedimpro
    python scripts/reproductions.py render

``collect`` copies each finished run's config.yaml, metrics.jsonl, summary.json and partition.json (no checkpoints)
and the sweep's manifest (manifests/<sweep>.json) into docs/reproductions/<experiment>/. ``render`` runs `fedsim report` on
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

import yaml

from fedsim.errors import ConfigError
from fedsim.experiments.report import ReportOptions, build_report, lower_is_better, percent
from fedsim.experiments.report_files import write_report
from fedsim.experiments.runs import as_text, is_bookkeeping, load_runs

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


def verdict(row: dict, metric: str, seeds: int, rounds: int) -> str:
    """From the paired interval of the claimed-better group - baseline, in the direction the claim states."""
    if seeds < MIN_SEEDS or rounds < MIN_ROUNDS:
        return f"incomplete ({seeds} seeds, {rounds} rounds; the protocol asks {MIN_SEEDS} and {MIN_ROUNDS})"
    sign = -1.0 if lower_is_better(metric) else 1.0
    low, high = sorted((sign * row["ci_low"], sign * row["ci_high"]))
    if low > 0:
        return "reproduced"
    if high < 0:
        return "not reproduced (the interval excludes 0 the other way)"
    return "inconclusive (the interval contains 0)"


def matching_group(better: list[str], groups: list[str], configs) -> str | None:
    """The group label holding every ``key=value`` of ``better``. A key that no label names does not
    vary among the runs (e.g. the runs that would set it otherwise are not committed yet): the runs
    that have it must then all have the wanted value, else nothing matches."""
    named = {item.split("=", 1)[0] for g in groups for item in g.split(", ")}
    for item in better:
        key, value = item.split("=", 1)
        if key not in named and (key not in configs or value not in set(as_text(configs[[key]])[key]) - {""}):
            return None
    wanted = {item for item in better if item.split("=", 1)[0] in named}
    return next((g for g in groups if wanted <= set(g.split(", "))), None)


def fmt(value: float, metric: str) -> str:
    return f"{value * 100:.2f}" if percent(metric) else f"{value:.4g}"


def graph_section(runs, last: int) -> list[str]:
    """Where runs inferred a cooperation graph (``graph_same_group_weight``): per run group, the share
    of a client's peer weight on its own label group over the last ``last`` rounds (mean +- std over
    seeds) beside what a graph blind to the grouping gives."""
    metrics = runs.metrics
    if "graph_same_group_weight" not in metrics or metrics["graph_same_group_weight"].isna().all():
        return []
    lines = ["### The inferred graph against the true grouping", "",
             f"Share of each client's peer weight on clients holding its own label set (mean of the last {last} rounds):", "",
             "| runs | n | same-group weight | blind graph |", "|---|---|---|---|"]
    rows = metrics.dropna(subset=["graph_same_group_weight"])
    per_run = rows.groupby("run").apply(lambda r: r.nlargest(last, "round")[["graph_same_group_weight", "graph_same_group_chance"]].mean())
    inferred = as_text(runs.configs.loc[per_run.index])  # the runs that inferred a graph, and the keys they differ in
    keys = [k for k in inferred.columns if not is_bookkeeping(k) and k != "seed" and inferred[k].nunique() > 1]
    configs = inferred[keys]
    labels = [", ".join(f"{k}={configs.loc[r, k]}" for k in keys) if keys else f"strategy={inferred.loc[r, 'strategy.name']}"
              for r in per_run.index]
    for label, group in per_run.groupby(labels):
        lines.append(f"| {label} | {len(group)} | {group['graph_same_group_weight'].mean():.3f} +- {group['graph_same_group_weight'].std():.3f} "
                     f"| {group['graph_same_group_chance'].mean():.3f} |")
    return lines + [""]


def render_claim(claim: dict) -> tuple[list[str], list[str]]:
    """(the claim's section of REPRODUCTIONS.md, its summary rows)."""
    dirs = [str(DOCS / e) for e in claim["experiments"] if (DOCS / e).is_dir()]
    section = [f"## Claim {claim['id']}: {claim['title']}", "", f"**Paper.** {claim['paper']}", ""]
    section += ["**Command.** " + "; ".join(f"`python -m fedsim run -m +experiment={e} --jobs 2`" for e in claim["experiments"])
                + " (each file states the proxy's scale-down next to the paper's setting).", ""]
    rows = []
    if not dirs:
        section += ["No runs committed yet.", ""]
        return section, [f"| {claim['id']} | {claim['title']} | - | not run yet |"]
    runs = load_runs(dirs)
    for k, comparison in enumerate(claim["comparisons"]):
        metric = comparison["metric"]
        metrics = [metric] + [m for m in claim["metrics"] if m != metric]
        out = DOCS / f"claim_{claim['id']}" / f"{k + 1}-{metric}-vs-{'_'.join(comparison['baseline']).replace('=', '-')}"
        last = int(comparison.get("last", claim["last"]))
        options = ReportOptions(metrics, [], list(comparison["baseline"]), None, last, comparison.get("compare", claim["compare"]), out)
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
            decision = verdict(row, metric, seeds, rounds)
            ours = (f"{fmt(row['diff'], metric)} [{fmt(row['ci_low'], metric)}, {fmt(row['ci_high'], metric)}] "
                    f"(n={seeds})")
        image = out.relative_to(DOCS.parent) / "report.png"
        section += [f"### {title}", "", table, "", f"Verdict: **{decision}**.", "", f"![{title}]({image.as_posix()})", ""]
        for warning in report.warnings:
            section.append(f"- warning: {warning}")
        rows.append(f"| {claim['id']} | {title} | {ours} | {decision} |")
    section += graph_section(runs, int(claim["last"]))
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
