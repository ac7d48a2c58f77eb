"""Twin-sight reproduction at our scale: FedAvg on labeled clients only vs FedAvg+FixMatch vs Twin-sight.

The paper's default label-deficient setting: 10 clients on a Dirichlet(alpha) partition, the first
``--labeled-clients`` fully labeled and the others unlabeled (or ``--labeled-ratio r``: every client
keeps a fraction r of its labels); same seed and rounds for the three methods. Fashion-MNIST
(offline default) and CIFAR-10 when its files are under data_root.

    python scripts/repro_twinsight.py --rounds 10
    python scripts/repro_twinsight.py --labeled-ratio 0.05
"""

from __future__ import annotations

from repro_common import common_setup, datasets_available, late_mean, repro_parser, run_fedsim

METHODS = {"fedavg": "FedAvg (labeled only)", "fixmatch": "FedAvg + FixMatch", "twinsight": "Twin-sight"}


def main() -> None:
    parser = repro_parser(__doc__)
    parser.add_argument("--labeled-clients", type=int, default=4)
    parser.add_argument("--labeled-ratio", type=float, default=None)
    args = parser.parse_args()

    split = (
        [f"partition.labeled_ratio={args.labeled_ratio}"]
        if args.labeled_ratio is not None
        else [f"partition.labeled_clients={args.labeled_clients}"]
    )
    runs_root, common = common_setup(args, "twinsight")
    common += split
    rows = []
    for dataset in datasets_available(args.data_root):
        for strategy, label in METHODS.items():
            rows.append(
                (
                    dataset,
                    label,
                    run_fedsim(
                        common + [f"dataset={dataset}", f"strategy={strategy}"], runs_root, f"{dataset}-{strategy}"
                    ),
                )
            )

    print(
        f"\nDirichlet alpha={args.alpha}, 10 clients, {' '.join(split)}, {args.rounds} rounds, seed {args.seed}, "
        f"CNN; runs in {runs_root}"
    )
    print(f"{'dataset':<14} {'method':<22} {'final acc':>9} {'best acc':>9} {'late mean':>9}")
    for dataset, method, s in rows:
        print(
            f"{dataset:<14} {method:<22} {s['final_test_accuracy']:>9.4f} {s['best_test_accuracy']:>9.4f} "
            f"{late_mean(s):>9.4f}"
        )
    print("late mean: mean test accuracy over the second half of the rounds")


if __name__ == "__main__":
    main()
