"""X-ray training throughput: full data pipeline + model vs the model alone; JPEG decode speed.

    .venv/bin/python benchmarks/xray_throughput.py [--model efficientnet_lite0] [--size 224]
        [--batch 32] [--steps 6] [--workers 2] [--threads 2]

Prints, measured in this process one after the other:
1. model alone: train steps (forward, backward, AdamW) on pre-decoded tensors;
2. full pipeline: the same steps fed by the real DataLoader (JPEG decode, grey, resize,
   augmentation in worker processes) from ``../shared/data/xray-224/train``;
3. the ratio (goal >= 0.9: the loader is not the bottleneck);
4. decode throughput of the ORIGINAL JPEGs in ``../shared/data/xray`` (full decode vs
   libjpeg draft decoding), single process, and the full ``load_image`` (decode + resize).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from medscan.xray import data as xd
from medscan.xray.model import build_model

SHARED = Path(os.environ.get("MEDSCAN_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))


CPU_SECONDS: list[float] = []  # process CPU seconds per image of the last _steps call


def _steps(model, batches, steps: int) -> float:
    """Images/s over ``steps`` training steps (after one warm-up step)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    it = iter(batches)
    n, t0 = 0, None
    for i in range(steps + 1):
        x, y = next(it)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i == 0:
            t0 = time.perf_counter()  # warm-up excluded
            c0 = time.process_time()
        else:
            n += len(y)
    CPU_SECONDS.append((time.process_time() - c0) / n)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--freeze", default="conv_stem,bn1,blocks.0,blocks.1,blocks.2",
                    help="comma-separated backbone modules to freeze ('' for none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    records = xd.scan_folder(SHARED / "xray-224", "train")
    rng = np.random.default_rng(0)
    n_images = args.batch * (args.steps + 2) * args.rounds
    records = [records[i] for i in rng.permutation(len(records))[:n_images]]
    aug = xd.make_augment({"degrees": 7, "translate": 0.05, "scale": [0.9, 1.1],
                           "brightness": 0.2, "contrast": 0.2})
    ds = xd.XrayDataset(records, args.size, augment=aug)
    model = build_model(args.model)
    if args.freeze:
        model.freeze(args.freeze.split(","))
    model = model.to(memory_format=torch.channels_last)
    print(f"model {args.model}, {args.size} px, batch {args.batch}, {args.steps} timed steps, "
          f"{args.threads} torch threads, {args.workers} loader workers, frozen [{args.freeze}], "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")

    # 1. model alone on pre-decoded tensors
    pre = [ds[i] for i in range(args.batch * (args.steps + 1))]
    batches = [
        (torch.stack([p[0] for p in pre[i : i + args.batch]]),
         torch.tensor([p[1] for p in pre[i : i + args.batch]]))
        for i in range(0, len(pre), args.batch)
    ]
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True,
                                         num_workers=args.workers,
                                         persistent_workers=args.workers > 0)
    # 2. full pipeline; interleaved rounds, best of each, so load from other processes on a
    # shared machine hits both sides alike
    alones, fulls = [], []
    for _ in range(args.rounds):
        alones.append(_steps(model, batches, args.steps))
        fulls.append(_steps(model, loader, args.steps))
    alone, full = max(alones), max(fulls)
    print(f"model alone (pre-decoded tensors): {alone:8.2f} img/s  (rounds: "
          f"{', '.join(f'{a:.2f}' for a in alones)})")
    print(f"full pipeline (decode+aug+model):  {full:8.2f} img/s  (rounds: "
          f"{', '.join(f'{f:.2f}' for f in fulls)})")
    print(f"ratio full / model alone:          {full / alone:8.3f}  (goal >= 0.9)")

    # CPU-time view (robust to other processes' load): model CPU s/img vs loader CPU s/img
    model_cpu = min(CPU_SECONDS[0::2])
    torch.set_num_threads(1)  # as in a DataLoader worker
    ds[0]
    c0 = time.process_time()
    for i in range(64):
        ds[i % len(ds)]
    load_cpu = (time.process_time() - c0) / 64
    torch.set_num_threads(args.threads)
    print(f"CPU seconds per image: model step {model_cpu:.4f}, decode+aug {load_cpu:.4f}; "
          f"expected ratio when the loader shares the model's cores: "
          f"{model_cpu / (model_cpu + load_cpu):.3f}")

    # loader alone, for scale
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    rate = n / (time.perf_counter() - t0)
    print(f"loader alone ({args.workers} workers):          {rate:8.1f} img/s")

    # 3. JPEG decode of the originals
    originals = sorted((SHARED / "xray").rglob("*.jpeg"))
    if originals:
        mpix = 0.0
        for p in originals:
            from PIL import Image

            with Image.open(p) as im:
                mpix += im.width * im.height / 1e6
        for label, kwargs in (("full decode", {}), ("draft decode (>=448 px)",
                                                    {"draft_size": 2 * args.size})):
            t0 = time.perf_counter()
            for p in originals:
                xd.read_image(p, **kwargs)
            dt = time.perf_counter() - t0
            print(f"originals, {label:24s}: {len(originals) / dt:7.1f} img/s "
                  f"({mpix / dt:6.1f} Mpixel/s of original size; {len(originals)} files, "
                  f"{mpix / len(originals):.1f} Mpixel mean)")
        t0 = time.perf_counter()
        for p in originals:
            xd.load_image(p, args.size)
        dt = time.perf_counter() - t0
        print(f"originals, load_image (draft+grey+resize): {len(originals) / dt:7.1f} img/s")
        t0 = time.perf_counter()
        for p in originals:
            xd.load_image(p, args.size, jpeg_draft=False)
        dt = time.perf_counter() - t0
        print(f"originals, load_image without draft:          {len(originals) / dt:7.1f} img/s")
    small = [r.path for r in records[:200]]
    t0 = time.perf_counter()
    for p in small:
        xd.load_image(p, args.size)
    dt = time.perf_counter() - t0
    print(f"xray-224 copies, load_image:  {len(small) / dt:7.1f} img/s (one process)")


if __name__ == "__main__":
    main()
