"""FedFed reproduction at our scale: each base algorithm with and without FedFed.

Same heterogeneous partition (Dirichlet alpha=0.1, 10 clients), same seed, same number of FL rounds
for every method; Fashion-MNIST (offline default) and, when its files are under data_root,
CIFAR-10 with the small CNN. Prints final and best test accuracy per method.

    python scripts/repro_fedfed.py                       # FedAvg, FedProx, each +/- FedFed
    python scripts/repro_fedfed.py --rounds 20 --bases fedavg fedprox scaffold fednova
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedsim.data import load_dataset
from fedsim.errors import DataError


def run(overrides: list[str], runs_root: str, name: str) -> dict:
    run_dir = Path(runs_root) / name
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "fedsim", "run", *overrides, f"run_dir={run_dir}"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["wall_s"] = time.time() - t0
    distill_log = run_dir / "distill_metrics.jsonl"  # FedFed's distillation and sharing traffic
    if distill_log.exists():
        for record in map(json.loads, distill_log.read_text().splitlines()):
            summary["bytes_down"] += record.get("bytes_down", 0)
            summary["bytes_up"] += record.get("bytes_up", sum(record.get("upload_bytes_per_client", {}).values()))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--bases", nargs="+", default=["fedavg", "fedprox"])
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default="./data")
    parser.add_argument("--runs-root", default=None, help="keep the run directories here (default: a temp dir)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run, e.g. backend=inprocess")
    args = parser.parse_args()

    datasets = ["fashion_mnist"]
    try:
        load_dataset("cifar10", args.data_root, False)
        datasets.append("cifar10")
    except DataError:
        print(f"CIFAR-10 not found under {args.data_root}: Fashion-MNIST only")

    runs_root = args.runs_root or tempfile.mkdtemp(prefix="repro_fedfed_")
    common = [f"num_rounds={args.rounds}", "num_clients=10", "partition=dirichlet", f"partition.alpha={args.alpha}",
              f"seed={args.seed}", f"data_root={args.data_root}", "model=cnn", *args.extra]
    rows = []
    for dataset in datasets:
        for base in args.bases:
            for fedfed in (False, True):
                strategy = ["strategy=fedfed", f"strategy.base={base}"] if fedfed else [f"strategy={base}"]
                name = f"{dataset}-{base}{'-fedfed' if fedfed else ''}"
                print(f"running {name} ...", flush=True)
                s = run(common + [f"dataset={dataset}"] + strategy, runs_root, name)
                rows.append((dataset, f"{base}{' + FedFed' if fedfed else ''}", s))

    print(f"\nDirichlet alpha={args.alpha}, 10 clients, {args.rounds} FL rounds, seed {args.seed}, CNN; runs in {runs_root}")
    print(f"{'dataset':<14} {'method':<20} {'final acc':>9} {'best acc':>9} {'MB up+down':>11} {'wall s':>7}")
    for dataset, method, s in rows:
        mb = (s["bytes_up"] + s["bytes_down"]) / 2**20
        print(f"{dataset:<14} {method:<20} {s['final_test_accuracy']:>9.4f} {s['best_test_accuracy']:>9.4f} {mb:>11.1f} {s['wall_s']:>7.0f}")


if __name__ == "__main__":
    main()
