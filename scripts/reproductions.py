"""Reproduction evidence: keep the small outputs of reproduction sweeps, render docs/REPRODUCTIONS.md, check reruns.

    python scripts/reproductions.py collect runs/sweeps/<timestamp>-repro_fedimpro
    python scripts/reproductions.py render
    python scripts/reproductions.py check b runs/sweeps/<timestamp>-repro_fedimpro   # e.g. rerun with seed=5,6,7
    python scripts/reproductions.py collect --rerun runs/sweeps/<timestamp>-repro_fedimpro  # keep it for the page

``collect`` copies each finished run's config.yaml, metrics.jsonl, summary.json and partition.json (no checkpoints)
and the sweep's manifest (manifests/<sweep>.json) into docs/reproductions/<experiment>/, or with ``--rerun`` into
docs/reproductions/reruns/<experiment>/ (a rerun may come in parts, as a claim's runs may: seeds 8, 9 after 5, 6, 7
where an interval straddles 0, as the protocol asks). ``render`` decides every
claim of docs/reproductions/claims.yaml on those folders (fedsim.experiments.claims: paired 95% intervals), writes
each comparison's report.md/.csv/.png under docs/reproductions/claim_<id>/ (removing the reports no comparison
writes any more), and writes docs/REPRODUCTIONS.md plus the summary table between the reproduction markers of
README.md. Every number on the page comes from the committed run outputs. ``check`` decides one claim on other runs,
such as a rerun of its command with other seeds, and sets each verdict beside the committed one (exit 1 when one
differs).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import pandas as pd
import yaml

from fedsim.errors import ConfigError
from fedsim.experiments.claims import MIN_ROUNDS, MIN_SEEDS, NOT_RUN, Outcome, evaluate_claim, subset
from fedsim.experiments.report import group_labels, percent, run_figures
from fedsim.experiments.report_files import write_report
from fedsim.experiments.runs import RunTable, join_runs, load_runs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "reproductions"
KEPT = ("config.yaml", "metrics.jsonl", "summary.json", "partition.json")
RERUNS = DOCS / "reruns"  # per experiment, its command rerun with other seeds, for the page's check of its verdicts
UNDECIDED = {NOT_RUN, "incomplete"}
README_START, README_END = "<!-- reproductions:start -->", "<!-- reproductions:end -->"


def collect(sweep: Path, rerun: bool = False) -> Path:
    manifest = json.loads((sweep / "manifest.json").read_text())
    # a claim's runs go to its experiment's folder; a rerun with other seeds to reruns/<experiment>/, beside it on the
    # page; either may be run in parts (e.g. more seeds), one manifest per sweep
    target = (RERUNS if rerun else DOCS) / manifest["name"]
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
    kept_manifest = target / "manifests" / f"{sweep.name}.json"
    kept_manifest.parent.mkdir(exist_ok=True)
    kept_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{target}: {kept} of {len(manifest['jobs'])} runs kept")
    return target


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
        cells = [mean_std(frame[m], m) if frame[m].notna().any() else "-" for m in spec["metrics"]]
        lines.append(f"| {label} | {len(frame)} | " + " | ".join(cells) + " |")
    return lines + [""]


def mean_std(values: pd.Series, metric: str) -> str:
    """``mean +- std`` over seeds; the mean alone where the spread is undefined (an infinite epsilon)."""
    finite = values.dropna()
    if len(finite) < 2 or not finite.map(math.isfinite).all():
        return cell(values.mean(), metric)
    return f"{cell(finite.mean(), metric)} +- {cell(finite.std(), metric)}"


def cell(value: float, metric: str) -> str:
    """A table entry: percent points for accuracies, three decimals below 1, two above."""
    if percent(metric):
        return f"{value * 100:.2f}"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


def committed_runs(experiments: list[str]) -> RunTable | None:
    dirs = [str(DOCS / e) for e in experiments if (DOCS / e).is_dir()]
    return load_runs(dirs) if dirs else None


def render_claim(claim: dict) -> tuple[list[str], list[str], list[Path]]:
    """(the claim's section of REPRODUCTIONS.md, its summary rows, the report folders it wrote)."""
    section = [f"## Claim {claim['id']}: {claim['title']}", "", f"**Paper.** {claim['paper']}", ""]
    section += [
        "**Command.** "
        + "; ".join(f"`python -m fedsim run -m +experiment={e} --jobs 2`" for e in claim["experiments"])
        + " (each file states the proxy's scale-down next to the paper's setting).",
        "",
    ]
    runs = committed_runs(claim["experiments"])
    if runs is None:
        section += ["No runs committed yet.", ""]
        return section, [f"| {claim['id']} | {claim['title']} | - | {NOT_RUN} |"], []
    comparisons, levels = evaluate_claim(runs, claim)
    dirs = [str((DOCS / e).relative_to(ROOT)) for e in claim["experiments"] if (DOCS / e).is_dir()]
    written: list[Path] = []
    for k, (comparison, outcome) in enumerate(zip(claim["comparisons"], comparisons, strict=True)):
        section += [f"### {outcome.label}", ""]
        if outcome.report is None:
            section += [outcome.explanation, ""]
            continue
        baseline = "_".join(comparison["baseline"]).replace("=", "-")
        out = DOCS / f"claim_{claim['id']}" / f"{k + 1}-{comparison['metric']}-vs-{baseline}"
        outcome.report.options.out = out
        _, table = write_report(outcome.report, dirs)
        written.append(out)
        image = out.relative_to(DOCS.parent) / "report.png"
        section += [table, "", f"Verdict: **{outcome.decision}**.", "", f"![{outcome.label}]({image.as_posix()})", ""]
        section += [f"- warning: {warning}" for warning in outcome.warnings]
    for outcome in levels:
        section += [f"### {outcome.label}", "", outcome.explanation, ""]
        if outcome.decision != NOT_RUN:
            section += [f"Verdict: **{outcome.decision}**.", ""]
    rows = [f"| {claim['id']} | {o.label} | {o.figure} | {o.decision} |" for o in comparisons + levels]
    for spec in claim.get("tables", []):
        table_runs = committed_runs(spec["experiments"]) if "experiments" in spec else runs
        section += group_table(table_runs, spec) if table_runs is not None else []
    notes = DOCS / f"claim_{claim['id']}" / "notes.md"
    if notes.is_file():
        section += ["**Findings.**", "", notes.read_text().strip(), ""]
    return section, rows, written


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
        "To check a verdict on other seeds, rerun the claim's commands with them",
        "(`python -m fedsim run -m +experiment=<name> seed=5,6,7 --jobs 2`)",
        "and decide the claim on those runs beside the committed ones:",
        "`python scripts/reproductions.py check <claim> runs/sweeps/<new sweep>...` (exit 1 when a verdict differs).",
        "Reruns kept with `collect --rerun <sweep>...` (under `docs/reproductions/reruns/<experiment>/`) are decided",
        "so at the end of this page.",
        "",
    ]
    summary = ["| claim | comparison | ours: paired difference, 95% CI | verdict |", "|---|---|---|---|"]
    body: list[str] = []
    written: list[Path] = []
    for claim in claims:
        section, rows, reports = render_claim(claim)
        body += section
        summary += rows
        written += reports
    for stale in {d for d in DOCS.glob("claim_*/*") if d.is_dir()} - set(written):
        shutil.rmtree(stale)  # a renamed or renumbered comparison's old report
    page = header + ["## Summary", "", *summary, "", *body, *render_reruns(claims)]
    (ROOT / "docs" / "REPRODUCTIONS.md").write_text("\n".join(page).rstrip() + "\n")
    readme = (ROOT / "README.md").read_text()
    if README_START in readme and README_END in readme:
        head, rest = readme.split(README_START, 1)
        _, tail = rest.split(README_END, 1)
        block = "\n".join([README_START, "", *summary, "", README_END])
        (ROOT / "README.md").write_text(head + block + tail)
    print(f"wrote {ROOT / 'docs' / 'REPRODUCTIONS.md'}")


def pooled_runs(committed: RunTable, rerun: RunTable) -> RunTable:
    """The committed runs and the rerun's together, less each rerun run that repeats a committed one (the same
    config and seed)."""
    joined = join_runs([committed, rerun])
    key = group_labels(joined.configs, []) + " seed=" + joined.configs["seed"].astype(str)
    repeat = (key.duplicated() & key.index.isin(rerun.configs.index)).to_numpy()
    return subset(joined, pd.Series(~repeat, index=joined.configs.index))


def rerun_rows(claim: dict, rerun_runs: RunTable) -> list[tuple[Outcome, Outcome, Outcome, str]]:
    """Each of ``claim``'s comparisons decided on the committed runs, on ``rerun_runs`` (e.g. a rerun with other
    seeds) and on both together: (committed, rerun, together, same), where same is "yes", "NO", or "-" unless
    decided on both, and together is decided only where the two share no seed of that comparison (its n is theirs
    summed)."""
    rerun = sum(evaluate_claim(rerun_runs, claim), [])
    committed_table = committed_runs(claim["experiments"])
    committed = together = [Outcome(o.label) for o in rerun]
    if committed_table is not None:
        committed = sum(evaluate_claim(committed_table, claim), [])
        if not set(committed_table.configs.index) & set(rerun_runs.configs.index):  # not the committed runs again
            pooled = sum(evaluate_claim(pooled_runs(committed_table, rerun_runs), claim), [])
            together = [
                both
                if all(o.verdict_class not in UNDECIDED for o in (ours, theirs))
                and both.pairs == ours.pairs + theirs.pairs
                else Outcome(both.label)
                for ours, theirs, both in zip(committed, rerun, pooled, strict=True)
            ]
    rows = []
    for ours, theirs, pooled_outcome in zip(committed, rerun, together, strict=True):
        decided = ours.verdict_class not in UNDECIDED and theirs.verdict_class not in UNDECIDED
        same = "-" if not decided else "yes" if ours.verdict_class == theirs.verdict_class else "NO"
        rows.append((ours, theirs, pooled_outcome, same))
    return rows


def rerun_table(rows: list[tuple[Outcome, Outcome, Outcome, str]], title: str) -> list[str]:
    """The markdown table of :func:`rerun_rows` and its one-line count."""
    lines = [f"| {title} | committed runs | these runs | same verdict | all seeds together |", "|---|---|---|---|---|"]
    for ours, theirs, pooled, same in rows:
        together = f"{pooled.verdict_class}: {pooled.figure}" if pooled.verdict_class not in UNDECIDED else "-"
        lines.append(
            f"| {theirs.label} | {ours.verdict_class}: {ours.figure} | {theirs.decision}: {theirs.figure} | {same} "
            f"| {together} |"
        )
    decided = sum(same != "-" for *_, same in rows)
    differ = sum(same == "NO" for *_, same in rows)
    return [*lines, "", f"{decided} comparisons decided on both, {differ} with another verdict."]


def check(claim_id: str, paths: list[str]) -> int:
    """Decide claim ``claim_id`` on the runs under ``paths`` (e.g. a rerun with other seeds) beside the committed
    runs' verdicts; 0 when every comparison decided on both has the same verdict, 1 when one differs (a
    ConfigError when none is decided on the given runs)."""
    claims = {str(c["id"]): c for c in yaml.safe_load((DOCS / "claims.yaml").read_text())}
    if claim_id not in claims:
        raise ConfigError(f"no claim '{claim_id}' in docs/reproductions/claims.yaml; claims: {', '.join(claims)}")
    claim = claims[claim_id]
    rows = rerun_rows(claim, load_runs(paths))
    print("\n".join(rerun_table(rows, f"claim {claim_id}")))
    if all(theirs.verdict_class in UNDECIDED for _, theirs, *_ in rows):
        raise ConfigError(
            f"none of claim {claim_id}'s comparisons is decided on these runs (each needs its two groups, "
            f"{MIN_SEEDS} seeds and {MIN_ROUNDS} rounds): pass the sweeps of {', '.join(claim['experiments'])}"
        )
    return 1 if any(same == "NO" for *_, same in rows) else 0


def render_reruns(claims: list[dict]) -> list[str]:
    """The page's section on the reruns kept under docs/reproductions/reruns/: each claim decided on the reruns of
    its experiments together (a claim's baseline and method may come from two experiments) beside its committed
    verdicts, the comparisons the reruns decide (a claim whose reruns decide none is left off)."""
    kept = {p.name: p for p in RERUNS.iterdir() if p.is_dir()} if RERUNS.is_dir() else {}
    section = []
    for claim in claims:
        folders = [kept[name] for name in claim["experiments"] if name in kept]
        if not folders:
            continue
        tables = [load_runs([str(folder)]) for folder in folders]
        seeds = [sorted(int(seed) for seed in table.configs["seed"].unique()) for table in tables]  # of the runs kept
        parts = [f"`{f.name}` with seeds {', '.join(map(str, s))}" for f, s in zip(folders, seeds, strict=True)]
        rows = [row for row in rerun_rows(claim, join_runs(tables)) if row[1].verdict_class not in UNDECIDED]
        if not rows:  # e.g. a rerun under way: the bases kept, the method not yet
            continue
        section += [f"### Claim {claim['id']}: {'; '.join(parts)}", ""]
        section += [*rerun_table(rows, f"claim {claim['id']}"), ""]
    if not section:
        return []
    return [
        "## Reruns with other seeds",
        "",
        "Each rerun below is a claim's commands run again with other seeds, its outputs kept under",
        "`docs/reproductions/reruns/<experiment>/` (one manifest per sweep it took) and decided with",
        "`python scripts/reproductions.py check <claim> <those folders>`. The last column decides each comparison on",
        "the committed runs and the rerun together (paired by seed, all seeds): the better estimate once both exist.",
        "",
        *section,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    collecting = sub.add_parser("collect", help="keep sweeps' small outputs under docs/reproductions/")
    collecting.add_argument("sweeps", nargs="+", type=Path)
    collecting.add_argument("--rerun", action="store_true", help="a claim's command rerun with other seeds: kept apart")
    sub.add_parser("render")
    checking = sub.add_parser("check", help="a claim's verdicts on other runs (e.g. other seeds) beside the committed")
    checking.add_argument("claim", help="the claim's id in docs/reproductions/claims.yaml, e.g. a")
    checking.add_argument("runs", nargs="+", help="sweep or run directories")
    args = parser.parse_args(argv)
    try:
        if args.command == "collect":
            for sweep in args.sweeps:
                collect(sweep, args.rerun)
        elif args.command == "check":
            return check(args.claim, args.runs)
        else:
            render()
    except ConfigError as err:
        print(f"reproductions: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
