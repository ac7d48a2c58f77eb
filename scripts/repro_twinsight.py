"""Twin-sight reproduction at our scale: FedAvg on labeled clients only vs FedAvg+FixMatch vs Twin-sight.

The paper's default label-deficient setting: 10 clients on a Dirichlet(alpha) partition, the first
``--labeled-clients`` fully labeled and the others unlabeled (or ``--labeled-ratio r``: every client
keeps a fraction r of its labels); same seed and rounds for the three methods. Fashion-MNIST
(offline default) and CIFAR-10 when its files are under data_root.

    python scripts/repro_twinsight.py --rounds 10
    python scripts/repro_twinsight.py --labeled-ratio 0.05
"""

from __future__ import annotations

import argparse
import tempfile

from repro_common import datasets_available, run_fedsim

METHODS = {"fedavg": "FedAvg (labeled only)", "fixmatch": "FedAvg + FixMatch", "twinsight": "Twin-sight"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--labeled-clients", type=int, default=4)
    parser.add_argument("--labeled-ratio", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default="./data")
    parser.add_argument("--runs-root", default=None)
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    args = parser.parse_args()

    split = ([f"partition.labeled_ratio={args.labeled_ratio}"] if args.labeled_ratio is not None
             else [f"partition.labeled_clients={args.labeled_clients}"])
    runs_root = args.runs_root or tempfile.mkdtemp(prefix="repro_twinsight_")
    common = [f"num_rounds={args.rounds}", "num_clients=10", "partition=dirichlet", f"partition.alpha={args.alpha}",
              *split, f"seed={args.seed}", f"data_root={args.data_root}", "model=cnn", *args.extra]
    rows = []
    for dataset in datasets_available(args.data_root):
        for strategy, label in METHODS.items():
            rows.append((dataset, label, run_fedsim(common + [f"dataset={dataset}", f"strategy={strategy}"], runs_root, f"{dataset}-{strategy}")))

    print(f"\nDirichlet alpha={args.alpha}, 10 clients, {' '.join(split)}, {args.rounds} rounds, seed {args.seed}, CNN; runs in {runs_root}")
    print(f"{'dataset':<14} {'method':<22} {'final acc':>9} {'best acc':>9} {'wall s':>7}")
    for dataset, method, s in rows:
        print(f"{dataset:<14} {method:<22} {s['final_test_accuracy']:>9.4f} {s['best_test_accuracy']:>9.4f} {s['wall_s']:>7.0f}")


if __name__ == "__main__":
    main()
