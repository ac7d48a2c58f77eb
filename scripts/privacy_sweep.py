"""Defence sweep: privacy (reconstruction PSNR) against utility (test accuracy) per defence setting.

Per setting: a short FedAvg run with the defence gives the utility (final test accuracy) and, for
DP, the epsilon spent; then Inverting Gradients attacks single-image updates of victims holding
the trained model, through the same defence (`python -m fedsim attack`). Central DP noises only
the aggregate, so the server still sees raw updates: its privacy column is the undefended attack
at its trained weights. Prints the table and saves privacy_vs_utility.png.

    python scripts/privacy_sweep.py --rounds 3 --images 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from fedsim.privacy.report import table

SETTINGS = [
    ("none", ["defence=none"]),
    ("pruning 90%", ["defence=pruning", "defence.ratio=0.9"]),
    ("pruning 99%", ["defence=pruning", "defence.ratio=0.99"]),
    ("local DP z=1e-4", ["defence=local_dp", "defence.noise_multiplier=0.0001"]),
    ("local DP z=1e-3", ["defence=local_dp", "defence.noise_multiplier=0.001"]),
    ("DP-SGD z=0.5", ["defence=dp_sgd", "defence.noise_multiplier=0.5"]),
    ("DP-SGD z=1", ["defence=dp_sgd", "defence.noise_multiplier=1.0"]),
    ("central DP z=1", ["defence=central_dp", "defence.noise_multiplier=1.0"]),
]


def fedsim(command: list[str], out: Path, what: str) -> dict:
    """Run ``python -m fedsim COMMAND`` unless ``out`` already holds its summary.json; that summary."""
    if not (out / "summary.json").is_file():
        print(f"{what} ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", "fedsim", *command], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row in rows:
        ax.scatter(row["test_acc"], row["psnr"])
        ax.annotate(
            row["defence"], (row["test_acc"], row["psnr"]), fontsize=8, xytext=(4, 4), textcoords="offset points"
        )
    ax.set(xlabel="test accuracy (utility)", ylabel="attack PSNR, dB (leakage)", title="privacy vs utility")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet alpha of the partition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default="./data")
    parser.add_argument("--runs-root", default=None, help="keep the run directories here (default: runs/privacy_sweep)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run, e.g. backend=inprocess")
    parser.add_argument("--images", type=int, default=4, help="victim images attacked per setting")
    parser.add_argument("--iterations", type=int, default=200, help="Inverting Gradients iterations")
    parser.add_argument("--samples", type=int, default=1000, help="samples per client in the training runs")
    args = parser.parse_args()
    root = Path(args.runs_root or "runs/privacy_sweep")
    common = [
        f"num_rounds={args.rounds}",
        "strategy=fedavg",
        "model=cnn",
        f"partition.alpha={args.alpha}",
        f"partition.max_samples_per_client={args.samples}",
        f"seed={args.seed}",
        f"data_root={args.data_root}",
        *args.extra,
    ]
    rows = []
    for label, overrides in SETTINGS:
        name = label.replace(" ", "_").replace("%", "pct").replace("=", "")
        summary = fedsim(["run", *common, *overrides, f"run_dir={root / name}"], root / name, f"training {name}")
        attacked = ["defence=none"] if "defence=central_dp" in overrides else overrides  # the server sees raw updates
        mean = fedsim(
            [
                "attack",
                *attacked,
                "attack=inverting_gradients",
                f"attack.iterations={args.iterations}",
                f"weights={root / name}",
                f"num_images={args.images}",
                "batch_size=1",
                f"seed={args.seed}",
                f"data_root={args.data_root}",
                f"out_dir={root / f'attack-{name}'}",
            ],
            root / f"attack-{name}",
            f"attacking {name}",
        )["mean"]
        last = json.loads((root / name / "metrics.jsonl").read_text().splitlines()[-1])
        eps = last.get("dp_epsilon")
        rows.append(
            {
                "defence": label,
                "test_acc": summary["final_test_accuracy"],
                "psnr": mean["psnr"],
                "ssim": mean["ssim"],
                "epsilon": "-" if eps is None else f"{eps:.3g}",
            }
        )
        print(table(rows[-1:], list(rows[-1])), flush=True)
    print(
        f"\nFashion-MNIST, FedAvg CNN, {args.rounds} rounds; Inverting Gradients on {args.images} single-image updates:"
    )
    print(table(rows, list(rows[0])))
    plot(rows, root / "privacy_vs_utility.png")
    print(f"plot: {root / 'privacy_vs_utility.png'}")


if __name__ == "__main__":
    main()
