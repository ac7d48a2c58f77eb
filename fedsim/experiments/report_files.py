"""Write a report's files: report.md, report.csv and report.png.

Write a :class:`~fedsim.experiments.report.Report`: report.md (a table a README can include), report.csv
(every figure, raw) and report.png (mean curves with a band of one std over seeds).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fedsim.experiments.report import TRAFFIC, Report, percent
from fedsim.results import integer_round_axis

STAT_TITLES = {"final": "final", "best": "best", "last": "mean of last {last}"}


def _number(value: float, scale: float, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * scale:.{digits}f}"


def _mean_std(mean: float, std: float, scale: float, digits: int) -> str:
    text = _number(mean, scale, digits)
    return text if text == "-" or math.isnan(std) else f"{text} ± {_number(std, scale, digits)}"


def _signed(value: float, scale: float) -> str:
    text = _number(value, scale, 2)
    return text if text == "-" or text.startswith("-") else f"+{text}"


def markdown_table(report: Report) -> str:
    """The report's table in Markdown: per group n, final, best and last-k means, traffic, paired differences."""
    options, table = report.options, report.table
    metric = options.metrics[0]
    scale, unit = (100.0, " (%)") if percent(metric) else (1.0, "")
    columns: dict[str, list[str]] = {"group": list(table["group"]), "n": [str(n) for n in table["n"]]}
    for stat, title in STAT_TITLES.items():
        columns[f"{title.format(last=options.last)}{unit}"] = [
            _mean_std(m, s, scale, 2) for m, s in zip(table[stat], table[stat + "_std"])
        ]
    columns[f"trend{unit}"] = [_signed(m, scale) for m in table["trend"]]
    if "rounds_to_target" in table:
        columns[f"rounds to {options.target:g}"] = [
            f"{_mean_std(m, s, 1, 1)} ({k}/{n})"
            for m, s, k, n in zip(
                table["rounds_to_target"], table["rounds_to_target_std"], table["reached_target"], table["n"]
            )
        ]
    for key, title in TRAFFIC.items():
        if key in table:
            columns[title] = [_number(v, 2**-20, 2) for v in table[key]]
    if "diff" in table:
        header = (
            f"Δ {STAT_TITLES[options.compare].format(last=options.last)} vs {' '.join(options.baseline)}{unit}, 95% CI"
        )
        columns[header] = [
            "baseline"
            if math.isnan(pairs)
            else f"{_number(d, scale, 2)} [{_number(lo, scale, 2)}, {_number(hi, scale, 2)}]"
            f"{' *' if sig else ''} (n={int(pairs)})"
            for d, lo, hi, sig, pairs in zip(
                table["diff"], table["ci_low"], table["ci_high"], table["significant"], table["pairs"]
            )
        ]
        columns["p (paired t)"] = ["" if math.isnan(p) else f"{p:.3g}" for p in table["p"]]
    return pd.DataFrame(columns).to_markdown(index=False, disable_numparse=True)  # keep the digits as formatted


def legend(report: Report, paths: list[str]) -> str:
    """The lines under the table saying what each column is and where the runs came from."""
    options = report.options
    lines = [
        f"{report.num_runs} runs in {len(report.table)} groups from {', '.join(paths)}; metric `{options.metrics[0]}`.",
        "Mean ± standard deviation over seeds (n runs); final = last evaluated round; best = best round.",
        f"trend = mean of the last {options.last} evaluations minus that of the {options.last} before, averaged "
        "over seeds: a curve that has levelled off is near 0; one that still rises calls for longer runs.",
    ]
    if options.baseline:
        lines.append(
            "Δ = paired difference to the baseline run with the same seed and otherwise the same config, mean and "
            "95% Student-t interval over seeds; * = the interval excludes 0."
        )
    return "\n".join(lines)


def plot_curves(report: Report, path: Path) -> None:
    """Per group, the metric's mean curve over rounds with a band of one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.curves)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        curve = report.curves[name]
        for group in report.table["group"]:
            rows = curve[curve["group"] == group]
            if (
                rows.empty or not rows["count"].notna().any()
            ):  # a group without this metric (e.g. a graph only SCooL infers)
                continue
            band = rows["std"].fillna(0.0)
            (line,) = ax.plot(rows["round"], rows["mean"], label=f"{group} (n={int(rows['count'].max())})")
            ax.fill_between(rows["round"], rows["mean"] - band, rows["mean"] + band, color=line.get_color(), alpha=0.2)
        ax.set(xlabel="round", ylabel=name, title=f"{name}: mean ± std over seeds")
        integer_round_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: Report, paths: list[str]) -> tuple[Path, str]:
    """Write report.md/.csv/.png into ``report.options.out``; (folder, the Markdown text)."""
    out = report.options.out
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(report)
    notes = "".join(f"\n- warning: {w}" for w in report.warnings)
    text = (
        f"{legend(report, paths)}\n\n{table}\n"
        + (f"\nWarnings:{notes}\n" if notes else "")
        + "\n![curves](report.png)\n"
    )
    (out / "report.md").write_text(text)
    report.table.to_csv(out / "report.csv", index=False)
    plot_curves(report, out / "report.png")
    return out, table
