"""Scale: FedAvg with thousands of registered clients, hundreds to thousands sampled per round.

Each configuration is a fresh `python -m fedsim run` (FedAvg, MLP, Fashion-MNIST split IID into
tiny client datasets: 60,000 / N samples each (past N=60,000, 6 samples drawn per client: they overlap), one local
epoch, one test-set evaluation at the end,
no checkpoints), and beside it, in the same invocation, the floor: the same work as a plain
single-process PyTorch loop with one thread (``scripts/plain_fedavg.py``: same partition, same
sampled clients, same optimizer and batch size). The ratio printed is
fedsim clients/s / (floor clients/s x cores fedsim used): 1.0 is a framework that adds nothing to
the loop and scales it perfectly over its cores. While it runs, the proportional set size (PSS: shared pages divided
among the
processes sharing them, so the sum is the real footprint) of the whole process tree (the server,
Ray's daemons and actors) is sampled from /proc every 0.2 s. Prints per configuration: seconds to
start (launch to the first round's start) and to the end of the first round, rounds/s and clients/s over the
rounds after the first, the floor's clients/s and the ratio, peak memory of all processes, the final accuracy of both
(equal within seed noise: nothing is skipped), and the memory growth per registered client between
the smallest and the largest N at the same clients per round (what an idle client costs).

On a running Ray cluster (``--ray-address``) the client actors belong to the cluster's daemons, not
to the run: memory then adds every process of the cluster on this machine (its daemons included).

    python scripts/bench_scale.py                                   # N in {1000, 10000, 100000} x K in {100, 1000},
    both backends
    python scripts/bench_scale.py --clients 1000 --per-round 100 --backends inprocess
    bash scripts/ray_cluster.sh --bench-scale --clients 1000 10000  # on a two-node Ray cluster (passes --ray-address)

Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fedsim.processes import descendants


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants."""
    return [root, *descendants(root)]


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def ray_cluster_pids() -> list[int]:
    """Processes of a Ray cluster running on this machine (daemons and workers)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].startswith(b"ray::") or any(b"/site-packages/ray/" in a or a.startswith(b"ray.") for a in args):
            pids.append(int(cmdline.parent.name))
    return pids


class PeakMemory(threading.Thread):
    """Samples the PSS of a process tree (plus, with ``ray_cluster``, every process of the Ray cluster
    it runs on) until stopped; keeps the peak."""

    def __init__(self, pid: int, ray_cluster: bool = False, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.ray_cluster, self.every, self.peak, self._halt = pid, ray_cluster, every, 0, threading.Event()

    def sample(self) -> int:
        pids = set(tree_pids(self.pid)) | (set(ray_cluster_pids()) if self.ray_cluster else set())
        return sum(pss_bytes(p) for p in pids)

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.sample())
            self._halt.wait(self.every)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


FLOOR = Path(__file__).with_name("plain_fedavg.py")


def samples_per_client(clients: int) -> int | None:
    """Past the dataset's size every client draws the samples a client holds at N=10,000, so that
    the per-client work is the same (None: the disjoint even split)."""
    return TRAIN_SAMPLES // 10_000 if clients > TRAIN_SAMPLES else None


def floor(clients: int, per_round: int, rounds: int) -> dict:
    """The plain loop's clients/s over the rounds after the first, its accuracy and peak memory (one thread)."""
    overlap = samples_per_client(clients)
    out = subprocess.run(
        [
            sys.executable,
            str(FLOOR),
            "--model=mlp",
            "--partition=iid",
            f"--clients={clients}",
            f"--per-round={per_round}",
            f"--rounds={rounds}",
            "--threads=1",
            *([f"--samples-per-client={overlap}"] if overlap else []),
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"the floor failed at N={clients} K={per_round}:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    times = result["round_s"][1:] or result["round_s"]
    return {
        "clients_per_s": per_round * len(times) / sum(times),
        "accuracy": result["accuracy"],
        "peak_gib": result["peak_rss_gib"],
    }


TRAIN_SAMPLES = 60_000  # Fashion-MNIST's training set: the most clients a disjoint IID split can make

# What each --backends choice runs: the simulation backend's pool engine (the default), Flower's own
# simulation engine (one actor call per message; the design the pool engine replaced), in-process.
BACKENDS = {
    "simulation": ["backend=simulation"],
    "simulation-flower": ["backend=simulation", "backend.engine=flower"],
    "inprocess": ["backend=inprocess"],
}


def measure(
    clients: int,
    per_round: int,
    rounds: int,
    backend: str,
    cores: int,
    extra: list[str],
    root: Path,
    ray_address: str | None,
) -> dict:
    run_dir = root / f"{backend}-n{clients}-k{per_round}"
    cmd = [
        sys.executable,
        "-m",
        "fedsim",
        "run",
        "strategy=fedavg",
        "model=mlp",
        "partition=iid",
        f"num_clients={clients}",
        f"clients_per_round={per_round}",
        f"num_rounds={rounds}",
        f"eval_every={rounds}",
        "checkpoint_every=0",
        "local_epochs=1",
        "batch_size=32",
        *BACKENDS[backend],
        "connect_timeout=600",
        f"backend.num_threads={cores}",
        f"run_dir={run_dir}",
        *extra,
    ]
    if samples_per_client(clients):
        cmd.append(f"partition.samples_per_client={samples_per_client(clients)}")
    if ray_address:
        cmd.append(f"+backend.ray_init_args.address={ray_address}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = PeakMemory(proc.pid, ray_cluster=bool(ray_address))
    memory.start()
    first_round_at = None
    for line in proc.stdout:
        if line.startswith("[round") and first_round_at is None:
            first_round_at = time.perf_counter()
    _, err = proc.communicate()
    total = time.perf_counter() - t0
    peak = memory.stop()
    if proc.returncode != 0:
        sys.exit(f"N={clients} K={per_round} failed:\n{err[-3000:]}")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [m["round_time_s"] for m in metrics[1:]] or [metrics[0]["round_time_s"]]
    round_time = sum(times) / len(times)
    startup = (first_round_at or t0) - t0 - metrics[0]["round_time_s"]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "clients": clients,
        "per_round": per_round,
        "backend": backend,
        "cores": cores,
        "startup_s": startup,
        "first_round_done_s": (first_round_at or t0) - t0,
        "rounds_per_s": 1 / round_time,
        "clients_per_s": per_round / round_time,
        "peak_gib": peak / 2**30,
        "wall_s": total,
        "accuracy": summary["final_test_accuracy"],
        "ok": all(m["clients_ok"] == per_round for m in metrics),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--per-round", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["simulation", "inprocess"],
        choices=list(BACKENDS),
        help="simulation-flower: Flower's simulation engine, for comparison (slow at large N)",
    )
    parser.add_argument(
        "--cores", type=int, default=os.cpu_count() or 1, help="cores the simulation backend uses (inprocess: 1)"
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides, e.g. data_root=... backend.num_cpus=1")
    parser.add_argument(
        "--ray-address", help="run on this running Ray cluster (HOST:PORT); memory then counts its processes too"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    rows = []
    for n in args.clients:
        if samples_per_client(n):
            print(
                f"N={n} is more clients than Fashion-MNIST's {TRAIN_SAMPLES} training samples: each draws "
                f"{samples_per_client(n)} of them (partition.samples_per_client; clients overlap)",
                flush=True,
            )
        for k in args.per_round:
            if k > n:
                continue
            print(f"N={n} registered, K={k} per round: the floor ...", flush=True)
            base = floor(n, k, args.rounds)
            for backend in args.backends:
                cores = 1 if backend == "inprocess" else args.cores
                print(f"N={n}, K={k}: fedsim {backend} on {cores} core(s) ...", flush=True)
                row = measure(n, k, args.rounds, backend, cores, args.extra, root, args.ray_address)
                row.update(
                    floor_clients_per_s=base["clients_per_s"],
                    floor_accuracy=base["accuracy"],
                    floor_peak_gib=base["peak_gib"],
                    ratio=row["clients_per_s"] / (base["clients_per_s"] * cores),
                )
                rows.append(row)
                print(
                    "  "
                    + ", ".join(
                        f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                        for key, value in row.items()
                    ),
                    flush=True,
                )
    where = (
        f" on the Ray cluster at {args.ray_address} (peak includes the cluster's processes)" if args.ray_address else ""
    )
    print(
        f"\nFedAvg, MLP, Fashion-MNIST IID, {args.rounds} rounds{where}; floor: plain PyTorch loop, 1 thread; runs "
        f"in {root}"
    )
    print(
        f"{'N':>7} {'K':>6} {'backend':>17} {'cores':>5} {'start s':>8} {'round 1 s':>9} {'clients/s':>10} "
        f"{'floor c/s':>10} "
        f"{'ratio':>6} "
        f"{'peak GiB':>9} {'acc':>6} {'floor acc':>9} {'all ok':>7}"
    )
    for r in rows:
        print(
            f"{r['clients']:>7} {r['per_round']:>6} {r['backend']:>17} {r['cores']:>5} {r['startup_s']:>8.1f} "
            f"{r['first_round_done_s']:>9.1f} "
            f"{r['clients_per_s']:>10.1f} "
            f"{r['floor_clients_per_s']:>10.1f} {r['ratio']:>6.2f} {r['peak_gib']:>9.2f} {r['accuracy']:>6.3f} "
            f"{r['floor_accuracy']:>9.3f} {str(r['ok']):>7}"
        )
    print("\nAs markdown (the README's table):\n")
    print(
        "| backend | registered N | per round K | cores | start-up s | round 1 done s | clients/s | floor clients/s "
        "| ratio | peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['clients']:,} | {r['per_round']:,} | {r['cores']} | {r['startup_s']:.1f} | "
            f"{r['first_round_done_s']:.1f} | "
            f"{r['clients_per_s']:.0f} | "
            f"{r['floor_clients_per_s']:.0f} | {r['ratio']:.2f} | {r['peak_gib']:.2f} |"
        )
    print()
    for backend in args.backends:
        for k in args.per_round:
            same_k = sorted(
                (r for r in rows if r["per_round"] == k and r["backend"] == backend), key=lambda r: r["clients"]
            )
            if len(same_k) >= 2:
                lo, hi = same_k[0], same_k[-1]
                growth = (hi["peak_gib"] - lo["peak_gib"]) * 2**30 / (hi["clients"] - lo["clients"])
                print(
                    f"{backend}, K={k}: memory growth per registered client {growth / 1024:.1f} KiB "
                    f"(N {lo['clients']} -> {hi['clients']}), start-up {lo['startup_s']:.1f} s -> "
                    f"{hi['startup_s']:.1f} s"
                )


if __name__ == "__main__":
    main()
