"""Framework overhead: `fedsim run` vs a plain PyTorch loop doing the same FedAvg work.

Both run as fresh processes, timed from launch to exit (imports, data loading, start-up and
shutdown included), on the same workload: FedAvg, small CNN, Fashion-MNIST, Dirichlet(0.5)
partition, every client trained each round for one local epoch, weighted averaging, and a
test-set evaluation per round. The plain loop trains the clients one after another in one process
with all cores (``scripts/plain_fedavg.py``); fedsim runs them on Flower's Ray simulation engine (one CPU per client
actor).

    python scripts/bench_overhead.py                      # 10 clients x 5 rounds
    python scripts/bench_overhead.py --clients 10 --rounds 2 --backend inprocess
    python scripts/bench_overhead.py --strategies all --rounds 2 --samples 1000   # every strategy

With ``--strategies``, each strategy's default run (its own setting, ``--rounds`` rounds) is also
timed on Flower's Ray simulation against the same strategy and client code called directly, one
client after another in one process (``backend=inprocess``): the ratio is what the engine adds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = Path(__file__).with_name("plain_fedavg.py")  # the same FedAvg work as a plain PyTorch loop


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"command failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return elapsed, out.stdout


STRATEGIES = [
    "fedavg",
    "fedprox",
    "scaffold",
    "fednova",
    "fedfed",
    "fedimpro",
    "fixmatch",
    "twinsight",
    "local",
    "dpsgd",
    "dispfl",
    "scool",
    "fedsa",
]


def fedsim_command(strategy: str, backend: str, args: argparse.Namespace, tmp: str, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fedsim",
        "run",
        f"strategy={strategy}",
        f"backend={backend}",
        f"num_rounds={args.rounds}",
        "local_epochs=1",
        "batch_size=32",
        f"seed={args.seed}",
        f"runs_root={tmp}",
        "checkpoint_every=0",
        *extra,
    ]


def accuracy_of(out: str) -> str:
    done = [line for line in out.splitlines() if line.startswith("done:")]
    return done[-1].split(";")[0].removeprefix("done: ") if done else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="simulation", choices=["simulation", "inprocess"])
    parser.add_argument(
        "--strategies", nargs="+", default=[], help=f"also time these (or 'all': {' '.join(STRATEGIES)})"
    )
    parser.add_argument("--samples", type=int, default=None, help="cap on samples per client for the per-strategy runs")
    args = parser.parse_args()
    strategies = STRATEGIES if args.strategies == ["all"] else args.strategies

    fedavg_work = [
        f"num_clients={args.clients}",
        f"clients_per_round={args.clients}",
        "partition=dirichlet",
        "partition.alpha=0.5",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain_s, plain_out = timed(
            [
                sys.executable,
                str(FLOOR),
                "--model=cnn",
                "--partition=dirichlet",
                "--alpha=0.5",
                f"--clients={args.clients}",
                f"--per-round={args.clients}",
                f"--rounds={args.rounds}",
                f"--seed={args.seed}",
                "--evaluate-every-round",
            ]
        )
        plain_out = f"accuracy {json.loads(plain_out)['accuracy']:.4f}"
        fedsim_s, fedsim_out = timed(fedsim_command("fedavg", args.backend, args, tmp, fedavg_work))
        print(f"workload: FedAvg, CNN, Fashion-MNIST, {args.clients} clients x {args.rounds} rounds x 1 epoch")
        print(f"plain PyTorch loop : {plain_s:8.1f} s   ({plain_out.strip()})")
        print(f"fedsim run ({args.backend}): {fedsim_s:8.1f} s   ({accuracy_of(fedsim_out)})")
        print(f"ratio fedsim / plain: {fedsim_s / plain_s:.3f}", flush=True)
        # Every strategy: the Flower/Ray run against the same strategy and client code called
        # directly, one client after another in one process (backend=inprocess: no Ray, no
        # serialisation), each with the strategy's own default setting.
        cap = [f"partition.max_samples_per_client={args.samples}"] if args.samples else []
        for strategy in strategies:
            direct_s, direct_out = timed(fedsim_command(strategy, "inprocess", args, tmp, cap))
            engine_s, engine_out = (
                timed(fedsim_command(strategy, args.backend, args, tmp, cap))
                if args.backend != "inprocess"
                else (direct_s, direct_out)
            )
            rows.append((strategy, direct_s, engine_s, accuracy_of(direct_out), accuracy_of(engine_out)))
            print(f"{strategy}: direct {direct_s:.1f} s, {args.backend} {engine_s:.1f} s", flush=True)
    if not rows:
        return
    print(
        f"\nper strategy, {args.rounds} rounds of its default "
        f"setting{f', <= {args.samples} samples per client' if args.samples else ''}:"
    )
    print(
        f"{'strategy':<10} {'direct s':>9} {args.backend + ' s':>13} {'ratio':>6}  accuracy (direct / {args.backend})"
    )
    for strategy, direct_s, engine_s, a, b in rows:
        print(f"{strategy:<10} {direct_s:>9.1f} {engine_s:>13.1f} {engine_s / direct_s:>6.2f}  {a} / {b}")


if __name__ == "__main__":
    main()
