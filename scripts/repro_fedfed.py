"""FedFed reproduction at our scale: each base algorithm with and without FedFed.

Same heterogeneous partition (Dirichlet alpha=0.1, 10 clients), same seed, same number of FL rounds
for every method; Fashion-MNIST (offline default) and, when its files are under data_root,
CIFAR-10 with the small CNN. Prints final and best test accuracy and traffic per method.

    python scripts/repro_fedfed.py                       # FedAvg, FedProx, each +/- FedFed
    python scripts/repro_fedfed.py --rounds 20 --bases fedavg fedprox scaffold fednova
"""

from __future__ import annotations

from repro_common import common_setup, datasets_available, late_mean, repro_parser, run_fedsim


def main() -> None:
    parser = repro_parser(__doc__)
    parser.add_argument("--bases", nargs="+", default=["fedavg", "fedprox"])
    args = parser.parse_args()
    runs_root, common = common_setup(args, "fedfed")

    rows = []
    for dataset in datasets_available(args.data_root):
        for base in args.bases:
            for fedfed in (False, True):
                strategy = ["strategy=fedfed", f"strategy.base={base}"] if fedfed else [f"strategy={base}"]
                name = f"{dataset}-{base}{'-fedfed' if fedfed else ''}"
                rows.append(
                    (
                        dataset,
                        f"{base}{' + FedFed' if fedfed else ''}",
                        run_fedsim(common + [f"dataset={dataset}"] + strategy, runs_root, name),
                    )
                )

    print(
        f"\nDirichlet alpha={args.alpha}, 10 clients, {args.rounds} FL rounds, seed {args.seed}, CNN; runs in "
        f"{runs_root}"
    )
    print(f"{'dataset':<14} {'method':<20} {'final acc':>9} {'best acc':>9} {'late mean':>9} {'MB up+down':>11}")
    for dataset, method, s in rows:
        mb = (s["bytes_up"] + s["bytes_down"]) / 2**20
        print(
            f"{dataset:<14} {method:<20} {s['final_test_accuracy']:>9.4f} {s['best_test_accuracy']:>9.4f} "
            f"{late_mean(s):>9.4f} {mb:>11.1f}"
        )
    print("late mean: mean test accuracy over the second half of the rounds")


if __name__ == "__main__":
    main()
