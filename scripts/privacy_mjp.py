"""MJP (Ren et al., CVPR 2023): attack the same images through a ViT trained with and without the
Masked Jigsaw Puzzle position embedding; print reconstruction quality and accuracy side by side.

Per variant: a short FedAvg run trains the ViT (`python -m fedsim run model=vit_tiny [defence=mjp]`),
then `python -m fedsim attack` attacks the same victim images through the trained model with APRIL's
closed form and with Inverting Gradients (victim batch 1; under MJP the victim's patches are
jigsawed at defence.eval_ratio=0.9 before its gradient is taken, as in the paper's evaluation).
The paper's claim: MJP lowers reconstruction quality by a large margin while keeping accuracy.

    python scripts/privacy_mjp.py --rounds 5 --images 8
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from repro_common import attack_fedsim, repro_parser, run_fedsim  # noqa: E402

from fedsim.privacy.report import table  # noqa: E402


def attack(run_dir: Path, defence: str, method: str, args, out: Path) -> dict:
    overrides = [
        "model=vit_tiny",
        f"defence={defence}",
        f"attack={method}",
        f"weights={run_dir}",
        f"num_images={args.images}",
        "batch_size=1",
        f"seed={args.seed}",
        f"data_root={args.data_root}",
    ]
    if method == "inverting_gradients":
        overrides.append(f"attack.iterations={args.iterations}")
    return attack_fedsim(overrides, out)


def main() -> None:
    parser = repro_parser(__doc__)
    parser.set_defaults(rounds=5)
    parser.add_argument("--images", type=int, default=8, help="victim images attacked per variant")
    parser.add_argument("--iterations", type=int, default=200, help="Inverting Gradients iterations")
    args = parser.parse_args()
    runs_root = Path(args.runs_root or "runs/privacy_mjp")
    train = [
        f"num_rounds={args.rounds}",
        "model=vit_tiny",
        "partition=iid",
        "num_clients=10",
        "clients_per_round=5",
        "partition.max_samples_per_client=2000",
        "optimizer.name=adam",
        "optimizer.lr=0.001",
        f"seed={args.seed}",
        f"data_root={args.data_root}",
        *args.extra,
    ]
    rows = []
    for label, defence in (("ViT", "none"), ("ViT + MJP", "mjp")):
        summary = run_fedsim([*train, f"defence={defence}"], str(runs_root), f"vit-{defence}")
        run_dir = runs_root / f"vit-{defence}"
        row = {"model": label, "test_acc": summary["final_test_accuracy"]}
        for method, short in (("april", "APRIL"), ("inverting_gradients", "IG")):
            mean = attack(run_dir, defence, method, args, runs_root / f"attack-{defence}-{method}")
            row[f"{short} PSNR"], row[f"{short} SSIM"] = mean["psnr"], mean["ssim"]
        rows.append(row)
        print(table([row], list(row)), flush=True)
    print(
        f"\nFashion-MNIST, FedAvg {args.rounds} rounds, ViT-Tiny (CPU size); attacks on {args.images} victim images, "
        "batch 1:"
    )
    print(table(rows, list(rows[0])))
    print(f"grids: {runs_root}/attack-*/grid.png")


if __name__ == "__main__":
    main()
