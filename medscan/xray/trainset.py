"""The data of a training run: patient-disjoint train/validation records and their loaders."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medscan.hpc import DistEnv

from . import data as xdata
from .train_log import log, log_split


@dataclass
class TrainingData:
    """Records of one run (from :func:`prepare_data`).

    Attributes
    ----------
    train, val : list of ImageRecord
        Patient-disjoint (or the given validation folder), byte-identical duplicates of training
        images dropped from ``val``.
    classes : list of str
        Class names; index = label.
    train_hashes, val_hashes : list of str
        Sorted SHA-256 of the images (stored in the checkpoint for the leakage guard).
    shared_patients : dict of str to int
        Patient ids in both sets -> validation images of them.
    """

    train: list[xdata.ImageRecord]
    val: list[xdata.ImageRecord]
    classes: list[str]
    train_hashes: list[str]
    val_hashes: list[str]
    shared_patients: dict[str, int]

    @property
    def train_patients(self) -> list[str]:
        """Sorted patient ids of the training images."""
        return sorted({r.patient_id for r in self.train})

    def class_counts(self) -> np.ndarray:
        """Training images per class, ``(n_classes,)`` int."""
        return np.bincount([r.label for r in self.train], minlength=len(self.classes))


def prepare_data(cfg: dict[str, Any], env: DistEnv) -> TrainingData:
    """Scan, split by patient, hash, and log what the model will see (rank 0 logs).

    Raises
    ------
    DatasetError
        Layout problems, or an empty validation set.
    ImageReadError
        An unreadable image (checked before training starts, naming the file).
    """
    d = cfg["data"]
    classes = list(d.get("classes") or xdata.CLASSES)
    root = Path(d.get("root") or xdata.SAMPLE_ROOT)
    regex = d.get("patient_regex")
    records = xdata.scan_folder(root, d.get("split"), classes=classes, patient_regex=regex)
    val_split = d.get("val_split")
    if val_split and (root / val_split).is_dir():
        train = records
        val = xdata.scan_folder(root, val_split, classes=classes, patient_regex=regex)
        source = f"{root / val_split}"
    else:
        fraction = float(d.get("val_fraction", 0.15))
        train, val = xdata.patient_split(records, fraction, int(d.get("split_seed", 0)))
        source = f"patient-disjoint {fraction:.0%} of the training folder"
    for r in [*train, *val]:  # fail before training starts, naming the file
        xdata.probe_image(r.path)
    hashes = {r.path: xdata.content_hash(r.path) for r in [*train, *val]}
    train_hashes = {hashes[r.path] for r in train}
    dup = [r for r in val if hashes[r.path] in train_hashes]
    if dup:
        log.warning("dropping %d validation images byte-identical to training images", len(dup))
        val = [r for r in val if hashes[r.path] not in train_hashes]
    shared = xdata.shared_patients(train, val)
    if env.is_main:
        log_split(root, source, train, val, classes, shared)
    if not val:
        raise xdata.DatasetError("validation set is empty")
    return TrainingData(train, val, classes, sorted(train_hashes),
                        sorted({hashes[r.path] for r in val}), shared)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    import os

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds third-party code using the global RNG
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 - per-worker global RNG for third-party code
    random.seed(seed)


def _loader(ds, batch_size: int, shuffle: bool, workers: int, seed: int, env: DistEnv,
            drop_last: bool = False):
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = None
    if env.enabled and shuffle:
        sampler = DistributedSampler(
            ds, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed,
            drop_last=drop_last,
        )
    gen = torch.Generator()
    gen.manual_seed(seed + env.rank)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init,
        generator=gen,
        pin_memory=torch.cuda.is_available(),
    )


@dataclass
class Loaders:
    """Training loader (sharded by ``DistributedSampler``) and this rank's validation shard.

    Attributes
    ----------
    train, val : DataLoader
    val_index : list of int
        Indices of this rank's validation images in the whole validation set.
    n_val : int
        Size of the whole validation set.
    """

    train: Any
    val: Any
    val_index: list[int]
    n_val: int


def make_loaders(cfg: dict[str, Any], data: TrainingData, seed: int, env: DistEnv) -> Loaders:
    """Datasets with the configured preprocessing (augmentation on training only), loaders."""
    from torch.utils.data import Subset

    d = cfg["data"]
    common = {"size": int(d["image_size"]), "resize": d.get("resize", "squash"),
              "jpeg_draft": bool(d.get("jpeg_draft", True)), "cache": bool(d.get("cache", False)),
              "reencode_jpeg": d.get("reencode_jpeg"), "clahe": bool(d.get("clahe", False))}
    train_ds = xdata.XrayDataset(data.train, augment=xdata.make_augment(d.get("augment")),
                                 **common)
    val_ds = xdata.XrayDataset(data.val, **common)
    batch = int(d.get("batch_size", 32))
    workers = int(d.get("num_workers", 2))
    train = _loader(train_ds, batch, True, workers, seed, env, drop_last=len(train_ds) > batch)
    val_index = list(range(len(val_ds)))[env.rank :: env.world_size]
    val = _loader(Subset(val_ds, val_index), batch, False, workers, seed, env)
    return Loaders(train, val, val_index, len(val_ds))
