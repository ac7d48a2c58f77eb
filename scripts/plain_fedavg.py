"""The floor of the benchmarks: FedAvg as a plain single-process PyTorch loop, no framework.

Per round: draw the round's clients exactly as fedsim does (same seeded draw), and for each one
load the global weights into one model, train one local epoch over the same seeded batch order (SGD lr 0.01, momentum
0.9, weight
decay 1e-4, batch 32: fedsim's defaults) on its samples and add its weights, times its sample
count, to a running sum; the weighted mean is the next global model. The partition and the
initial model are fedsim's (same seeds), so both compute the same models up to float rounding. Run as its own process
so that its imports, threads and memory are its
own; prints one JSON line: per-round seconds, final test accuracy, peak RSS.

    python scripts/plain_fedavg.py --model mlp --partition iid --clients 10000 --per-round 1000 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def plain_fedavg(
    model_name: str, partition: dict, clients: int, per_round: int, rounds: int, seed: int, evaluate_every_round: bool
) -> dict:
    """Run the loop; returns {"round_s": [...], "accuracy": final test accuracy, "startup_s": ...}."""
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from torch.nn import functional as F

    from fedsim.data import load_dataset, make_partition
    from fedsim.models import build_model
    from fedsim.seeding import rng, seed_torch, torch_generator

    ds = load_dataset("fashion_mnist")
    splits = make_partition(ds.y_train.numpy(), clients, partition, seed)
    seed_torch(seed, "init")  # fedsim's seeded initial model
    model = build_model(model_name, ds.input_shape, ds.num_classes)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    x_train = ds.normalize(ds.x_train)

    def accuracy() -> float:
        model.load_state_dict(global_state)
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(ds.y_test), 1000):
                correct += (
                    (model(ds.normalize(ds.x_test[start : start + 1000])).argmax(1) == ds.y_test[start : start + 1000])
                    .sum()
                    .item()
                )
        return correct / len(ds.y_test)

    startup = time.perf_counter() - t0
    round_s, acc = [], float("nan")
    ids = [c for c in range(clients) if len(splits[c].labeled) > 0]
    for server_round in range(1, rounds + 1):
        start = time.perf_counter()
        sampled = sorted(
            int(c) for c in rng(seed, "sample", server_round).choice(ids, min(per_round, len(ids)), replace=False)
        )
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_state.items()}
        examples = 0
        for cid in sampled:
            model.load_state_dict(global_state)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            idx = torch.from_numpy(np.asarray(splits[cid].labeled))
            x, y = x_train[idx], ds.y_train[idx]
            order = torch.randperm(
                len(y), generator=torch_generator(seed, "shuffle", server_round, cid)
            )  # fedsim's batches
            for batch in order.split(32):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[batch]), y[batch]).backward()
                opt.step()
            for k, v in model.state_dict().items():
                total[k].add_(v.double(), alpha=len(y))
            examples += len(y)
        global_state = {k: (v / examples).to(global_state[k].dtype) for k, v in total.items()}
        if evaluate_every_round or server_round == rounds:
            acc = accuracy()
        round_s.append(time.perf_counter() - start)
    return {"round_s": round_s, "accuracy": acc, "startup_s": startup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--partition", default="iid", choices=["iid", "dirichlet"])
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument(
        "--samples-per-client", type=int, help="iid: every client draws this many samples (clients overlap)"
    )
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--per-round", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, all cores)")
    parser.add_argument("--evaluate-every-round", action="store_true")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    partition = (
        {"name": args.partition, "alpha": args.alpha, "min_size": 10}
        if args.partition == "dirichlet"
        else {"name": "iid", "samples_per_client": args.samples_per_client}
    )
    result = plain_fedavg(
        args.model, partition, args.clients, args.per_round, args.rounds, args.seed, args.evaluate_every_round
    )
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result))


if __name__ == "__main__":
    main()
