"""DDP speed-up of ``medscan train``: 1 process vs ``torchrun --nproc_per_node N`` (gloo on CPU).

    .venv/bin/python benchmarks/xray_ddp.py [--nproc 2] [--images 256] [--size 128]
        [--model mobilenetv3_large_100] [--epochs 2]

Builds a class-balanced subset of ``../shared/data/xray-224/train`` (symlinks; the embedded
sample when the shared data is absent), trains the same config once as one process (all CPU
threads) and once under torchrun (threads split between ranks), and prints the training
images/s of the LAST epoch of each (the first includes start-up) and their ratio; a third
run, one process with one thread, separates thread oversubscription from DDP itself.
On one machine the ranks share its cores: this measures DDP overhead plus any gain from
process-level parallelism, not a multi-node scale-out.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSCAN_SHARED_DATA", REPO.parent / "shared" / "data"))


def _subset(root: Path, n: int) -> Path:
    src = SHARED / "xray-224" / "train"
    if not src.is_dir():
        src = REPO / "medscan" / "sample" / "xray"
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((src / cls).iterdir())[: n // 2]
        (root / cls).mkdir(parents=True)
        for f in files:
            (root / cls / f.name).symlink_to(f)
    return root


def _rate(out: Path) -> float:
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return float(rows[-1]["train_images_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--model", default="mobilenetv3_large_100")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="per process")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = _subset(Path(tmp) / "data", args.images)
        common = [f"data.root={data}", f"model={args.model}", f"data.image_size={args.size}",
                  f"trainer.max_epochs={args.epochs}", "trainer.early_stopping_patience=null",
                  "data.val_fraction=0.2", "data.num_workers=1", "trainer.log_every_n_steps=0",
                  "trainer.accelerator=cpu"]
        rates = {}
        for label, launcher, extra in (
            ("1 process", [sys.executable, "-m", "medscan.cli"], [f"data.batch_size={args.batch}"]),
            ("1 proc 1 thr", [sys.executable, "-m", "medscan.cli"],
             [f"data.batch_size={args.batch}", "trainer.num_threads=1"]),
            (f"torchrun x{args.nproc}",
             [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc_per_node", str(args.nproc), "-m", "medscan.cli"],
             [f"data.batch_size={args.batch}"]),
        ):
            out = Path(tmp) / label.replace(" ", "_")
            proc = subprocess.run([*launcher, "train", *common, *extra, f"output={out}"],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{label} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            rates[label] = _rate(out)
            print(f"{label:14s}: {rates[label]:7.2f} train img/s (last epoch)", flush=True)
        one, one_thread, many = rates.values()
        print(f"speed-up torchrun x{args.nproc} / 1 process: {many / one:.2f}; "
              f"/ 1 process with 1 thread: {many / one_thread:.2f} "
              f"({os.cpu_count()} CPUs, {args.model}, {args.size} px, {args.images} images, "
              f"batch {args.batch} per process)")


if __name__ == "__main__":
    main()
