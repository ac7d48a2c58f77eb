"""Defence sweep: privacy (reconstruction PSNR) against utility (test accuracy) per defence setting.

Per setting: a short FedAvg run with the defence gives the utility (final test accuracy) and, for
DP, the epsilon spent; then Inverting Gradients attacks single-image updates of victims holding
the trained model, through the same defence (`python -m fedsim attack`). Central DP noises only
the aggregate, so the server still sees raw updates: its privacy column is the undefended attack
at its trained weights. Prints the table and saves privacy_vs_utility.png.

    python scripts/privacy_sweep.py --rounds 3 --images 4
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from repro_common import attack_fedsim, repro_parser, run_fedsim  # noqa: E402

from fedsim.privacy.report import table  # noqa: E402

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
    parser = repro_parser(__doc__)
    parser.set_defaults(rounds=3)
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
        summary = run_fedsim([*common, *overrides], str(root), name)
        attacked = ["defence=none"] if "defence=central_dp" in overrides else overrides  # the server sees raw updates
        mean = attack_fedsim(
            [
                *attacked,
                "attack=inverting_gradients",
                f"attack.iterations={args.iterations}",
                f"weights={root / name}",
                f"num_images={args.images}",
                "batch_size=1",
                f"seed={args.seed}",
                f"data_root={args.data_root}",
            ],
            root / f"attack-{name}",
        )
        eps = summary["metrics"][-1].get("dp_epsilon")
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
