"""Decentralized personalized FL at our scale: local-only, D-PSGD, DisPFL, SCooL (Dirac, SBM, attention).

The pathological partition of the DisPFL and SCooL papers, "2 classes per client" (shards), with
data-scarce clients as in DisPFL (500 CIFAR images each): here 10 clients with 300 Fashion-MNIST
samples each (CIFAR-10 too when its files are under data_root), all active every round, each
receiving from 3 peers, 2 local epochs; same seed and rounds for every method. Prints the mean personalized accuracy
(each client's own model on its own test
split) and the traffic that would cross peer links: total and per round at the busiest node.
The claims to check: DisPFL and SCooL beat D-PSGD and local-only in personalized accuracy, and
DisPFL's busiest-node traffic is a fraction of the dense methods'.

    python scripts/repro_decentralized.py --rounds 12
"""

from __future__ import annotations

import tempfile

import numpy as np
from repro_common import datasets_available, late_mean, repro_parser, run_fedsim

METHODS = {
    "local": ["strategy=local"],
    "dpsgd": ["strategy=dpsgd"],
    "dispfl": ["strategy=dispfl"],
    "scool-dirac": ["strategy=scool", "strategy.prior=dirac", "strategy.topology=random"],
    "scool-sbm": ["strategy=scool", "strategy.prior=sbm"],
    "scool-attention": ["strategy=scool", "strategy.prior=attention"],
}


def main() -> None:
    parser = repro_parser(__doc__)
    parser.set_defaults(rounds=12)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--samples", type=int, default=300, help="training samples per client")
    parser.add_argument("--active", type=int, default=10, help="clients active per round")
    parser.add_argument("--neighbours", type=int, default=3, help="peers each active client receives from")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--classes", type=int, default=2, help="classes per client (shards)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    runs_root = args.runs_root or tempfile.mkdtemp(prefix="repro_decentralized_")
    common = [
        f"num_rounds={args.rounds}",
        f"num_clients={args.clients}",
        f"clients_per_round={args.active}",
        f"min_clients={min(2, args.active)}",
        "partition=shards",
        f"partition.classes_per_client={args.classes}",
        "model=cnn",
        f"partition.max_samples_per_client={args.samples}",
        f"local_epochs={args.local_epochs}",
        f"seed={args.seed}",
        f"data_root={args.data_root}",
        f"strategy.num_neighbours={args.neighbours}",
        *args.extra,
    ]
    rows = []
    for dataset in datasets_available(args.data_root):
        for method in args.methods:
            summary = run_fedsim(common + [f"dataset={dataset}", *METHODS[method]], runs_root, f"{dataset}-{method}")
            rows.append((dataset, method, summary))

    print(
        f"\nshards ({args.classes} classes per client), {args.clients} clients x {args.samples} samples, "
        f"{args.active} active per round, "
        f"{args.neighbours} peers, {args.local_epochs} local epochs, "
        f"{args.rounds} rounds, seed {args.seed}, CNN; runs in {runs_root}"
    )
    print(f"{'dataset':<14} {'method':<16} {'final acc':>9} {'late mean':>9} {'P2P MB':>8} {'busiest MB/rnd':>14}")
    for dataset, method, s in rows:
        p2p = [r.get("p2p_bytes", 0) for r in s["metrics"]]
        busiest = [r.get("p2p_busiest_node_bytes", 0) for r in s["metrics"]]
        print(
            f"{dataset:<14} {method:<16} {s['final_test_accuracy']:>9.4f} {late_mean(s):>9.4f} "
            f"{sum(p2p) / 2**20:>8.1f} {np.mean(busiest) / 2**20:>14.2f}"
        )


if __name__ == "__main__":
    main()
