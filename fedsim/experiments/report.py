"""``python -m fedsim report DIR...``: statistics over seeds.

``python -m fedsim report DIR...``: group runs by config difference, statistics over seeds, paired differences
to a baseline with Student-t intervals; report.md, report.csv, report.png.

A report is a function of run directories only, so every table it prints can be regenerated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fedsim.errors import ConfigError
from fedsim.experiments.runs import RunTable, as_text, is_bookkeeping

CONFIDENCE = 0.95
TRAFFIC = {"bytes_up": "MB up/round", "bytes_down": "MB down/round", "p2p_busiest_node_bytes": "MB busiest node/round"}


@dataclass
class ReportOptions:
    """What ``fedsim report`` computes; ``metrics[0]`` is the one the table is about."""

    metrics: list[str] = field(default_factory=lambda: ["test_accuracy"])
    group_by: list[str] = field(default_factory=list)
    baseline: list[str] = field(default_factory=list)  # key=value pairs that select the baseline runs
    target: float | None = None
    last: int = 5
    compare: str = "final"  # the per-run figure the paired difference is taken of: final | best | last
    out: Path = Path("report")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (losses, dissimilarities, bytes)."""
    return "loss" in metric or "dissimilarity" in metric or "bytes" in metric


def percent(metric: str) -> bool:
    """Whether ``metric`` is shown in percent (accuracies)."""
    return "accuracy" in metric


def _column(configs: pd.DataFrame, key: str) -> str:
    """A config key as a column: a group name (``strategy``) means its option (``strategy.name``)."""
    if f"{key}.name" in configs.columns:
        return f"{key}.name"
    if key not in configs.columns:
        raise ConfigError(
            f"'{key}' is not a config key of these runs: use a dotted key, e.g. strategy or partition.alpha"
        )
    return key


def _show(key: str) -> str:
    return key.removesuffix(".name")


def group_labels(configs: pd.DataFrame, group_by: list[str]) -> pd.Series:
    """A label per run: the config keys that set it apart (seed and bookkeeping excluded), or ``group_by``'s values.

    A config group whose option differs shows as ``strategy=fedprox``; its other keys show only
    where they differ between runs of the same option (e.g. a swept ``strategy.mu``).
    """
    text = as_text(configs)
    if group_by:
        keys = [_column(configs, k) for k in group_by]
    else:
        candidates = [k for k in text.columns if k != "seed" and not is_bookkeeping(k)]
        differing = [k for k in candidates if text[k].nunique() > 1]
        options = {k.removesuffix(".name") for k in differing if k.endswith(".name")}
        keys = []
        for key in differing:
            owner = key.split(".")[0]
            if (
                key.endswith(".name")
                or owner not in options
                or (text.groupby(f"{owner}.name")[key].nunique() > 1).any()
            ):
                keys.append(key)
    if not keys:
        return pd.Series("all runs", index=configs.index)
    return text[keys].apply(lambda row: ", ".join(f"{_show(k)}={v}" for k, v in row.items() if v != ""), axis=1)


def baseline_runs(configs: pd.DataFrame, baseline: list[str]) -> tuple[pd.Series, list[str]]:
    """(mask of the runs ``baseline`` selects, the config columns the baseline's keys cover)."""
    mask = pd.Series(True, index=configs.index)
    family: list[str] = []
    for spec in baseline:
        key, sep, value = spec.partition("=")
        if not sep:
            raise ConfigError(f"--baseline {spec}: write key=value, e.g. --baseline strategy=fedavg")
        column = _column(configs, key)
        mask &= as_text(configs[[column]])[column] == value
        family += [c for c in configs.columns if c == key or c.startswith(key + ".")]
    if not mask.any():
        raise ConfigError(f"--baseline {' '.join(baseline)} matches none of the runs")
    return mask, family


def late_trend(values: np.ndarray, last: int) -> float:
    """How much a curve still moves at its end.

    The mean of the last ``last`` evaluations minus the mean of the ``last`` before (fewer where the
    run has fewer than twice as many; NaN with fewer than two, or with a non-finite value): near 0 once
    a curve has levelled off, positive while an accuracy still rises.
    """
    k = min(last, values.size // 2)
    if k < 1 or not np.isfinite(values[-2 * k :]).all():  # e.g. an infinite epsilon: no trend to read
        return math.nan
    return float(values[-k:].mean() - values[-2 * k : -k].mean())


def run_figures(metrics: pd.DataFrame, metric: str, last: int, target: float | None) -> pd.DataFrame:
    """Per run: final, best, mean of the last ``last`` evaluations, late trend, rounds to ``target``, traffic."""
    rows = {}
    for run, frame in metrics.groupby("run", sort=False):
        evaluated = frame.dropna(subset=[metric]) if metric in frame else frame.iloc[0:0]
        values = evaluated[metric].to_numpy(dtype=float) if len(evaluated) else np.array([])
        row = {
            "rounds": int(frame["round"].max()),
            "final": values[-1] if values.size else math.nan,
            "best": (values.min() if lower_is_better(metric) else values.max()) if values.size else math.nan,
            "last": values[-last:].mean() if values.size else math.nan,
            "trend": late_trend(values, last),
        }
        if target is not None:
            reached = (
                evaluated[evaluated[metric] <= target]
                if lower_is_better(metric)
                else evaluated[evaluated[metric] >= target]
            )
            row["rounds_to_target"] = float(reached["round"].iloc[0]) if len(reached) else math.nan
        for key in TRAFFIC:
            if key in frame:
                row[key] = frame[key].mean()
        rows[run] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def paired_difference(values: np.ndarray, base: np.ndarray) -> dict[str, float]:
    """Mean of ``values - base`` (paired), its 95% Student-t interval and the paired t-test's p-value."""
    diff = values - base
    n = diff.size
    mean = float(diff.mean()) if n else math.nan
    std = float(diff.std(ddof=1)) if n > 1 else math.nan
    if n < 2:
        low = high = p = math.nan
    elif std == 0:  # every seed gives the same difference: the interval is that point
        low = high = mean
        p = 1.0 if mean == 0 else 0.0
    else:
        low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=std / math.sqrt(n))
        p = float(stats.ttest_rel(values, base).pvalue)
    return {
        "pairs": n,
        "diff": mean,
        "diff_std": std,
        "ci_low": float(low),
        "ci_high": float(high),
        "p": p,
        "significant": bool(n > 1 and (low > 0 or high < 0)),
    }


@dataclass
class Report:
    """Per-group statistics (``table``, raw numbers), mean curves, and warnings."""

    table: pd.DataFrame
    curves: dict[str, pd.DataFrame]
    warnings: list[str]
    options: ReportOptions
    num_runs: int


def build_report(runs: RunTable, options: ReportOptions) -> Report:
    """Group the runs, take each group's statistics over seeds and the paired differences to the baseline."""
    configs, metrics = runs.configs, runs.metrics
    metric = options.metrics[0]
    if metric not in metrics:
        raise ConfigError(
            f"--metric {metric}: no run reported it; metrics there: "
            f"{', '.join(sorted(c for c in metrics if c not in ('run', 'round')))}"
        )
    labels = group_labels(configs, options.group_by)
    figures = run_figures(metrics, metric, options.last, options.target)
    figures["group"], figures["seed"] = labels, configs["seed"]
    warnings: list[str] = []
    for label, frame in figures.groupby("group", sort=False):
        if frame["rounds"].nunique() > 1:
            warnings.append(
                f"{label}: runs have different lengths ({', '.join(map(str, sorted(frame['rounds'].unique())))} rounds)"
            )
        if frame["seed"].duplicated().any():
            warnings.append(
                f"{label}: several runs share a seed ({', '.join(map(str, frame['seed'][frame['seed'].duplicated()]))})"
            )
    order = list(dict.fromkeys(labels))
    stat_columns = ["final", "best", "last", "trend"] + [c for c in ("rounds_to_target", *TRAFFIC) if c in figures]
    grouped = figures.groupby("group", sort=False)
    table = pd.DataFrame({"group": order}).set_index("group")
    table["n"] = grouped.size()
    table["seeds"] = grouped["seed"].apply(lambda s: " ".join(map(str, sorted(s))))
    table["rounds"] = grouped["rounds"].min()
    for column in stat_columns:
        table[column] = grouped[column].mean()
        table[column + "_std"] = grouped[column].std(ddof=1)
    if "rounds_to_target" in figures:
        table["reached_target"] = grouped["rounds_to_target"].count()
    if options.baseline:
        table = table.join(compare_to_baseline(configs, figures, options, warnings))
        base_labels = set(labels[baseline_runs(configs, options.baseline)[0]])
        table = table.loc[[g for g in order if g in base_labels] + [g for g in order if g not in base_labels]]
    curves = {}
    for name in options.metrics:
        if name not in metrics:
            warnings.append(f"--metric {name}: no run reported it")
            continue
        per_round = metrics[["run", "round", name]].dropna().assign(group=lambda f: labels.loc[f["run"]].to_numpy())
        curves[name] = (
            per_round.groupby(["group", "round"], sort=False)[name].agg(["mean", "std", "count"]).reset_index()
        )
    return Report(table.reset_index(), curves, warnings, options, len(configs))


def compare_to_baseline(
    configs: pd.DataFrame, figures: pd.DataFrame, options: ReportOptions, warnings: list[str]
) -> pd.DataFrame:
    """Per group, the paired difference to the baseline run of the same seed.

    Per group: the paired difference of ``options.compare`` to the baseline run with the same seed and
    otherwise the same config (every key but the baseline's own and bookkeeping).
    """
    is_base, family = baseline_runs(configs, options.baseline)
    context_keys = [k for k in configs.columns if k != "seed" and not is_bookkeeping(k) and k not in family]
    context = (
        as_text(configs[context_keys]).apply(tuple, axis=1)
        if context_keys  # runs differing only in the baseline's keys all share one (empty) context
        else pd.Series([()] * len(configs), index=configs.index)
    )
    partners = {(context[r], configs.at[r, "seed"]): r for r in configs.index[is_base]}
    base_labels = set(figures.loc[is_base, "group"])
    rows = {}
    for label, frame in figures.groupby("group", sort=False):
        if label in base_labels:
            continue
        values, base, unpaired = [], [], []
        for run, row in frame.iterrows():
            partner = partners.get((context[run], row["seed"]))
            if partner is None:
                unpaired.append(str(row["seed"]))
            else:
                values.append(row[options.compare])
                base.append(figures.at[partner, options.compare])
        if unpaired:
            warnings.append(
                f"{label}: seed {', '.join(unpaired)} has no baseline run ({' '.join(options.baseline)}, same seed "
                "and config): left out of the difference"
            )
        rows[label] = paired_difference(np.array(values, dtype=float), np.array(base, dtype=float))
    return pd.DataFrame.from_dict(rows, orient="index")
