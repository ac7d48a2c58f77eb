"""Verdicts of registered claims on a set of runs.

A claim (an entry of ``docs/reproductions/claims.yaml``) names ``comparisons`` (a claimed-better group against a
baseline, paired by seed) and ``levels`` (a metric that must stay within a margin of a reference measured in the
same runs). :func:`evaluate_claim` decides each of them on any :class:`~fedsim.experiments.runs.RunTable`: the
committed runs (the page ``scripts/reproductions.py render`` writes) or a rerun with other seeds (``check``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from fedsim.errors import ConfigError
from fedsim.experiments.report import (
    Report,
    ReportOptions,
    baseline_runs,
    build_report,
    group_labels,
    lower_is_better,
    paired_difference,
    percent,
    run_figures,
)
from fedsim.experiments.runs import RunTable, as_text

MIN_SEEDS, MIN_ROUNDS = 3, 50
NOT_RUN = "not run yet"


@dataclass
class Outcome:
    """One comparison's or level check's result: what the page and the summary show of it."""

    label: str
    figure: str = "-"  # the paired difference with its 95% interval and n, or "-" when not decided
    decision: str = NOT_RUN
    pairs: int = 0  # the seeds the figure is taken over (0 when not decided)
    report: Report | None = None  # a comparison's full report (tables and curves), when its runs are there
    explanation: str = ""  # a level check's one-line reading, or why nothing was decided
    warnings: list[str] = field(default_factory=list)

    @property
    def verdict_class(self) -> str:
        """The verdict without its reason: reproduced, not reproduced, inconclusive, incomplete, not run yet."""
        return self.decision.split(" (")[0]


def verdict(row: dict, claimed_lower: bool, seeds: int, rounds: int, margin: float = 0.0) -> str:
    """The verdict read from the paired interval of the claimed-better group minus the baseline.

    The interval is read in the direction the claim states; with a ``margin``, the claim is "no worse than
    ``margin``" (non-inferiority).
    """
    if seeds < MIN_SEEDS or rounds < MIN_ROUNDS:
        return incomplete(seeds, rounds)
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


def incomplete(seeds: int, rounds: int) -> str:
    """The verdict of a comparison with fewer seeds or rounds than the protocol asks."""
    return f"incomplete ({seeds} seeds, {rounds} rounds; the protocol asks {MIN_SEEDS} and {MIN_ROUNDS})"


def level_check(runs: RunTable, spec: dict) -> Outcome:
    """Whether ``spec['metric']`` stays within ``spec['margin']`` of ``spec['reference']``.

    Both are measured in the same runs (those ``spec['runs']`` selects), e.g. an attack's PSNR against a random
    image's: the 95% interval of the per-run difference (last round) must lie below the margin.
    """
    try:
        mask, _ = baseline_runs(runs.configs, list(spec["runs"]))
    except ConfigError as err:  # the runs it selects are not there
        return Outcome(spec["label"], explanation=f"Not run yet ({err}).")
    metrics = subset(runs, mask).metrics
    value = run_figures(metrics, spec["metric"], 1, None)
    reference = run_figures(metrics, spec["reference"], 1, None)
    both = value[["final", "rounds"]].join(reference["final"].rename("reference")).dropna()
    row = paired_difference(both["final"].to_numpy(), both["reference"].to_numpy())
    seeds, rounds, margin = int(row["pairs"]), int(both["rounds"].min()) if len(both) else 0, float(spec["margin"])
    if seeds < MIN_SEEDS or rounds < MIN_ROUNDS:
        decision = incomplete(seeds, rounds)
    elif row["ci_high"] < margin:
        decision = "reproduced"
    elif row["ci_low"] > margin:
        decision = f"not reproduced (more than {margin:g} above the reference)"
    else:
        decision = f"inconclusive (the interval crosses the margin of {margin:g})"
    figure = f"{row['diff']:.4g} [{row['ci_low']:.4g}, {row['ci_high']:.4g}] (n={seeds})"
    explanation = (
        f"`{spec['metric']}` - `{spec['reference']}` in the same runs ({', '.join(spec['runs'])}), "
        f"mean over seeds with its 95% interval: {figure}; the claim holds when the interval lies below {margin:g}."
    )
    return Outcome(spec["label"], figure, decision, seeds, explanation=explanation)


def matching_group(better: list[str], groups: list[str], configs: Any) -> str | None:
    """The group label holding every ``key=value`` of ``better``.

    Where several do, the one naming fewest other options (``selection=random`` is the plain group, not
    ``selection=random, teachers.foreign=[5]``). A key that no label names does not vary among the runs (e.g. the
    runs that would set it otherwise are not there): the runs that have it must then all have the wanted value,
    else nothing matches.
    """
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
    """A difference as the summary shows it: percent points for accuracies, four significant digits else."""
    return f"{value * 100:.2f}" if percent(metric) else f"{value:.4g}"


def comparison_label(comparison: dict) -> str:
    """A comparison's title: its ``label``, or its groups, and the metric it compares."""
    better = as_list(comparison["better"])
    title = comparison.get("label") or f"{', '.join(better)} vs {' '.join(comparison['baseline'])}"
    return f"{title}, `{comparison['metric']}`"


def as_list(selector: str | list[str]) -> list[str]:
    """A group selector (``key=value`` or a list of them) as a list."""
    return [selector] if isinstance(selector, str) else list(selector)


def in_setting(runs: RunTable, comparison: dict) -> RunTable:
    """The runs of the setting ``comparison`` is made in: those holding every ``key=value`` its two groups share.

    A baseline pins its setting with such items (``partition.alpha=0.05``, ``num_rounds=150``). The report pairs
    each group with the baseline run of the same seed and otherwise the same config *but the baseline's keys*, so
    without this a run of another setting (FedFed at Dirichlet 0.1) would be paired with the baseline's (FedAvg at
    0.05) and shown beside it. Raises :class:`ConfigError` when no run is of that setting.
    """
    shared = [item for item in as_list(comparison["better"]) if item in comparison["baseline"]]
    if not shared:
        return runs
    return subset(runs, baseline_runs(runs.configs, shared)[0])


def paired_with_baseline(runs: RunTable, options: ReportOptions) -> RunTable:
    """The baseline's runs and those of every group paired with it on at least one seed.

    A group with no run of the baseline's config beside it (FedAvg at Dirichlet 0.05 in a comparison against
    FedProx, run at 0.1 only) has nothing to say about the comparison: the page leaves it out of its table.
    """
    table = build_report(runs, options).table
    if "pairs" not in table:  # no group beside the baseline's
        return runs
    shown = set(table.loc[table["pairs"].fillna(-1) != 0, "group"])  # the baseline's rows have no pairs (NaN)
    return subset(runs, group_labels(runs.configs, options.group_by).isin(shown))


def subset(runs: RunTable, mask: pd.Series) -> RunTable:
    """The runs ``mask`` (over ``runs.configs``' rows) selects, with their metrics."""
    return RunTable(runs.configs[mask], runs.metrics[runs.metrics["run"].isin(runs.configs.index[mask])])


def compare(runs: RunTable, claim: dict, comparison: dict) -> Outcome:
    """One comparison of ``claim`` decided on ``runs``."""
    metric = comparison["metric"]
    label = comparison_label(comparison)
    options = ReportOptions(
        [metric] + [m for m in claim["metrics"] if m != metric],
        [],
        list(comparison["baseline"]),
        comparison.get("target"),  # optional: rounds each run takes to reach it, as a column of the table
        int(comparison.get("last", claim["last"])),
        comparison.get("compare", claim["compare"]),
    )
    try:
        runs = paired_with_baseline(in_setting(runs, comparison), options)
        report = build_report(runs, options)
    except ConfigError as err:  # e.g. the baseline's runs are not there
        return Outcome(label, explanation=f"Not run yet ({err}).")
    outcome = Outcome(label, report=report, warnings=list(report.warnings))
    rows_by_group = report.table.set_index("group")
    group = matching_group(as_list(comparison["better"]), list(rows_by_group.index), runs.configs)
    if group is None or "diff" not in rows_by_group:
        return outcome
    row = rows_by_group.loc[group].to_dict()
    seeds, rounds = int(row["pairs"]), int(row["rounds"])
    claimed_lower = comparison.get("claimed", "lower" if lower_is_better(metric) else "higher") == "lower"
    outcome.decision = verdict(row, claimed_lower, seeds, rounds, float(comparison.get("margin", 0.0)))
    interval = f"[{fmt(row['ci_low'], metric)}, {fmt(row['ci_high'], metric)}]"
    outcome.figure = f"{fmt(row['diff'], metric)} {interval} (n={seeds})"
    outcome.pairs = seeds
    return outcome


def evaluate_claim(runs: RunTable, claim: dict) -> tuple[list[Outcome], list[Outcome]]:
    """(the outcome of each of ``claim``'s comparisons, of each of its level checks), decided on ``runs``."""
    return (
        [compare(runs, claim, comparison) for comparison in claim["comparisons"]],
        [level_check(runs, spec) for spec in claim.get("levels", [])],
    )
