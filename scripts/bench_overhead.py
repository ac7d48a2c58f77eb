"""Framework overhead: `fedsim run` vs a plain PyTorch loop doing the same FedAvg work.

Both run as fresh processes, timed from launch to exit (imports, data loading, start-up and
shutdown included), on the same workload: FedAvg, small CNN, Fashion-MNIST, Dirichlet(0.5)
partition, every client trained each round for one local epoch, weighted averaging, and a
test-set evaluation per round. The plain loop trains the clients one after another in one process
with all cores; fedsim runs them on Flower's Ray simulation engine (one CPU per client actor).

    python scripts/bench_overhead.py                      # 10 clients x 5 rounds
    python scripts/bench_overhead.py --clients 10 --rounds 2 --backend inprocess
    python scripts/bench_overhead.py --strategies all --rounds 2 --samples 1000   # every strategy

With ``--strategies``, each strategy's default run (its own setting, ``--rounds`` rounds) is also
timed on Flower's Ray simulation against the same strategy and client code called directly, one
client after another in one process (``backend=inprocess``): the ratio is what the engine adds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time


def plain_loop(clients: int, rounds: int, seed: int) -> float:
    """The same FedAvg work in plain PyTorch; returns the final test accuracy."""
    import torch
    from torch.nn import functional as F

    from fedsim.data import load_dataset, make_partition
    from fedsim.models import build_model

    ds = load_dataset("fashion_mnist")
    splits = make_partition(ds.y_train.numpy(), clients, {"name": "dirichlet", "alpha": 0.5, "min_size": 10}, seed)
    torch.manual_seed(seed)
    model = build_model("cnn", ds.input_shape, ds.num_classes)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    acc = 0.0
    for _ in range(rounds):
        states, sizes = [], []
        for split in splits:
            model.load_state_dict(global_state)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            x_all, y_all = ds.x_train[torch.from_numpy(split.labeled)], ds.y_train[torch.from_numpy(split.labeled)]
            order = torch.randperm(len(y_all))
            model.train()
            for start in range(0, len(order), 32):
                idx = order[start : start + 32]
                opt.zero_grad()
                F.cross_entropy(model(ds.normalize(x_all[idx])), y_all[idx]).backward()
                opt.step()
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            sizes.append(len(y_all))
        total = sum(sizes)
        global_state = {
            k: sum(s[k].double() * (n / total) for s, n in zip(states, sizes)).to(states[0][k].dtype) for k in states[0]
        }
        model.load_state_dict(global_state)
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(ds.y_test), 1000):
                x = ds.normalize(ds.x_test[start : start + 1000])
                correct += (model(x).argmax(1) == ds.y_test[start : start + 1000]).sum().item()
        acc = correct / len(ds.y_test)
    return acc


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"command failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return elapsed, out.stdout


STRATEGIES = ["fedavg", "fedprox", "scaffold", "fednova", "fedfed", "fedimpro", "fixmatch", "twinsight",
              "local", "dpsgd", "dispfl", "scool", "fedsa"]


def fedsim_command(strategy: str, backend: str, args: argparse.Namespace, tmp: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "fedsim", "run", f"strategy={strategy}", f"backend={backend}",
            f"num_rounds={args.rounds}", "local_epochs=1", "batch_size=32", f"seed={args.seed}", f"runs_root={tmp}",
            "checkpoint_every=0", *extra]


def accuracy_of(out: str) -> str:
    done = [line for line in out.splitlines() if line.startswith("done:")]
    return done[-1].split(";")[0].removeprefix("done: ") if done else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="simulation", choices=["simulation", "inprocess"])
    parser.add_argument("--strategies", nargs="+", default=[], help=f"also time these (or 'all': {' '.join(STRATEGIES)})")
    parser.add_argument("--samples", type=int, default=None, help="cap on samples per client for the per-strategy runs")
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        print(f"accuracy {plain_loop(args.clients, args.rounds, args.seed):.4f}")
        return
    strategies = STRATEGIES if args.strategies == ["all"] else args.strategies

    fedavg_work = [f"num_clients={args.clients}", f"clients_per_round={args.clients}", "partition=dirichlet", "partition.alpha=0.5"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain_s, plain_out = timed([sys.executable, __file__, "--plain", f"--clients={args.clients}", f"--rounds={args.rounds}"])
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
            engine_s, engine_out = timed(fedsim_command(strategy, args.backend, args, tmp, cap)) if args.backend != "inprocess" else (direct_s, direct_out)
            rows.append((strategy, direct_s, engine_s, accuracy_of(direct_out), accuracy_of(engine_out)))
            print(f"{strategy}: direct {direct_s:.1f} s, {args.backend} {engine_s:.1f} s", flush=True)
    if not rows:
        return
    print(f"\nper strategy, {args.rounds} rounds of its default setting{f', <= {args.samples} samples per client' if args.samples else ''}:")
    print(f"{'strategy':<10} {'direct s':>9} {args.backend + ' s':>13} {'ratio':>6}  accuracy (direct / {args.backend})")
    for strategy, direct_s, engine_s, a, b in rows:
        print(f"{strategy:<10} {direct_s:>9.1f} {engine_s:>13.1f} {engine_s / direct_s:>6.2f}  {a} / {b}")


if __name__ == "__main__":
    main()
