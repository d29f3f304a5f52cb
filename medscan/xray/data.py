"""Chest X-ray data: folder layouts, image decoding to one mode, patient ids, splits, leakage guard.

Every image, whatever its file format or mode (8-bit grey, RGB, RGBA, 16-bit PNG, DICOM DX/CR
with MONOCHROME1/2), becomes a ``float32`` grey array in ``[0, 1]`` of shape ``(H, W)``, and is
then resized to ``(size, size)`` by :func:`preprocess`, the single function used in training,
evaluation, prediction and Grad-CAM. So the original image size never reaches the model.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Class names in label order (label 1 = PNEUMONIA is the positive class).
CLASSES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
#: File suffixes taken as images (lower case). Other files in class folders are ignored.
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".dcm", ".dicom"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
#: Kermany names: ``person1_bacteria_1`` -> ``person1``; ``IM-0011-0001-0002`` -> ``IM-0011``;
#: ``NORMAL2-IM-0587-0001`` -> ``NORMAL2-IM-0587``.
KERMANY_PATIENT_REGEX = r"^(person\d+)_|^((?:NORMAL2-)?IM-\d+)"
#: The embedded 16-image sample (``ROOT/<CLASS>/*``).
SAMPLE_ROOT = Path(__file__).resolve().parents[1] / "sample" / "xray"


class ImageReadError(ValueError):
    """An image file cannot be decoded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        # one-argument form: torch's DataLoader re-raises worker errors as ``cls(message)``
        self.path = str(path)
        self.reason = reason or ""
        super().__init__(f"{path}: {reason}" if reason is not None else str(path))


class DatasetError(ValueError):
    """The folder layout is wrong (missing/empty/unknown class folder, no images)."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a data set.

    Attributes
    ----------
    path : Path
        The file.
    label : int or None
        Index into the class names (``None`` when unknown, e.g. for prediction).
    patient_id : str
        Patient id parsed from the file name (falls back to the file stem).
    """

    path: Path
    label: int | None
    patient_id: str


# ----------------------------------------------------------------------------------- patient ids
def patient_id(name: str, regex: str | None = None) -> str:
    """Patient id from a file name.

    Parameters
    ----------
    name : str
        File name (with or without folders; only the last part is used).
    regex : str, optional
        A regular expression; the first non-empty capture group (or the whole match when it has
        no groups) is the id. Default: :data:`KERMANY_PATIENT_REGEX`.

    Returns
    -------
    str
        The patient id, or the file stem when the pattern does not match.
    """
    stem = Path(name).name
    stem = stem[: -len(Path(stem).suffix)] if Path(stem).suffix else stem
    match = re.search(regex or KERMANY_PATIENT_REGEX, stem)
    if match is None:
        return stem
    groups = [g for g in match.groups() if g]
    return groups[0] if groups else match.group(0)


# ----------------------------------------------------------------------------------- layouts
def class_root(root: str | Path, split: str | None = None) -> Path:
    """The folder that holds the class folders: ``ROOT/<split>`` if it exists, else ``ROOT``.

    Raises
    ------
    DatasetError
        When ``root`` (or a requested split that is not there while ``ROOT`` holds other
        splits) does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: data root does not exist")
    if split and (root / split).is_dir():
        return root / split
    if split and not any((root / c).is_dir() for c in CLASSES):
        raise DatasetError(
            f"{root}: no split folder {split!r} and no class folders "
            f"({', '.join(CLASSES)}) directly under the root"
        )
    return root


def scan_folder(
    root: str | Path,
    split: str | None = None,
    *,
    classes: Sequence[str] = CLASSES,
    patient_regex: str | None = None,
) -> list[ImageRecord]:
    """List the labelled images of ``ROOT/<split>/<CLASS>/*`` or ``ROOT/<CLASS>/*``.

    Parameters
    ----------
    root : path
        Data root.
    split : str, optional
        Split sub-folder (``train``, ``val``, ``test``); used when ``ROOT/<split>`` exists.
    classes : sequence of str
        Known class names, label order.
    patient_regex : str, optional
        See :func:`patient_id`.

    Returns
    -------
    list of ImageRecord
        Sorted by (label, file name).

    Raises
    ------
    DatasetError
        A sub-folder whose name is not a known class, a class folder without images, or no
        class folder at all. The message names the folder.
    """
    base = class_root(root, split)
    subdirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p for p in subdirs if p.name not in classes]
    if unknown:
        raise DatasetError(
            f"{unknown[0]}: unknown class folder {unknown[0].name!r}; the model knows "
            f"{list(classes)}"
        )
    if not subdirs:
        raise DatasetError(f"{base}: no class folders ({', '.join(classes)}) found")
    records: list[ImageRecord] = []
    for folder in subdirs:
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DatasetError(
                f"{folder}: empty class folder (no {'/'.join(sorted(IMAGE_SUFFIXES))} files)"
            )
        label = list(classes).index(folder.name)
        records += [ImageRecord(p, label, patient_id(p.name, patient_regex)) for p in files]
    return records


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) to a sorted list of image files.

    Raises
    ------
    DatasetError
        When an input does not exist or nothing was found.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            found.append(path)
        else:
            raise DatasetError(f"{path}: no such file or folder")
    if not found:
        raise DatasetError(f"no images found in {[str(i) for i in inputs]}")
    return found


def class_counts(records: Sequence[ImageRecord], classes: Sequence[str] = CLASSES) -> dict:
    """``{class name: number of images}`` (in class order)."""
    counts = Counter(r.label for r in records)
    return {name: counts.get(i, 0) for i, name in enumerate(classes)}


# ----------------------------------------------------------------------------------- decoding
def _pil_to_grey(img, path: Path) -> np.ndarray:
    """Any Pillow image -> float32 grey in [0, 1]."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
    elif mode == "I":  # 32-bit int container (often 16-bit data)
        raw = np.asarray(img, dtype=np.int64)
        top = 65535.0 if raw.max(initial=0) <= 65535 else float(raw.max())
        arr = np.clip(raw, 0, None).astype(np.float32) / top
    elif mode == "F":
        raw = np.asarray(img, dtype=np.float32)
        lo, hi = float(raw.min()), float(raw.max())
        arr = (raw - lo) / (hi - lo) if hi > lo else np.zeros_like(raw)
    else:
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
            # composite onto black: transparent pixels carry no radiograph
            rgba = img.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            img = Image.alpha_composite(black, rgba)
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(path, f"unexpected decoded shape {arr.shape} (mode {mode})")
    return arr


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise ImageReadError(path, f"not a readable DICOM file ({exc})") from exc
    modality = str(ds.get("Modality", ""))
    if modality not in ("DX", "CR", "DR", "RG", "PX", ""):
        raise ImageReadError(path, f"DICOM modality {modality!r} is not a radiograph (DX/CR)")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({exc})") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        arr = pixels.astype(np.float32).mean(axis=-1)
    elif pixels.ndim == 2:
        arr = apply_modality_lut(pixels, ds).astype(np.float32)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            arr = apply_voi_lut(arr, ds, prefer_lut=True).astype(np.float32)
    else:
        raise ImageReadError(path, f"DICOM pixel array of shape {pixels.shape} is not one image")
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if photometric == "MONOCHROME1":  # high values are dark: invert to the usual look
        arr = 1.0 - arr
    return arr.astype(np.float32)


def read_image(path: str | Path, *, draft_size: int | None = None) -> np.ndarray:
    """Decode an image file to a grey ``float32`` array in ``[0, 1]``, shape ``(H, W)``.

    Parameters
    ----------
    path : path
        JPEG, PNG (8/16-bit, grey/RGB/RGBA/palette) or DICOM DX/CR. RGB becomes grey by ITU-R
        601 luma; alpha is composited onto black; 16-bit is scaled by 65535; DICOM gets its
        modality LUT, VOI LUT/window, min-max scaling and MONOCHROME1 inversion.
    draft_size : int, optional
        For JPEG only: let libjpeg decode at a reduced DCT scale that is still at least this
        many pixels on each side (much faster for large originals). ``None`` decodes fully.

    Raises
    ------
    ImageReadError
        When the file cannot be decoded; the message names the file and the reason.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    is_dicom = path.suffix.lower() in DICOM_SUFFIXES
    if not is_dicom:
        try:
            with open(path, "rb") as fh:
                is_dicom = fh.read(132)[128:132] == b"DICM"
        except OSError as exc:
            raise ImageReadError(path, f"cannot open ({exc.strerror or exc})") from exc
    if is_dicom:
        return _read_dicom(path)
    try:
        with Image.open(path) as img:
            if draft_size and img.format == "JPEG":
                img.draft(img.mode if img.mode in ("L", "RGB") else None, (draft_size, draft_size))
            img.load()
            return _pil_to_grey(img, path)
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image Pillow can identify (JPEG/PNG/DICOM)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(path, f"cannot decode ({exc})") from exc


def probe_image(path: str | Path) -> None:
    """Check that a file's header is a readable image (fast; pixel data are not decoded).

    Raises
    ------
    ImageReadError
        Naming the file and the reason.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open ({exc.strerror or exc})") from exc
    if path.suffix.lower() in DICOM_SUFFIXES or head[128:132] == b"DICM":
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            raise ImageReadError(path, f"not a readable DICOM file ({exc})") from exc
        if "Rows" not in ds:
            raise ImageReadError(path, "DICOM file without an image")
        return
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - header parsed by open()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, "not an image Pillow can identify (JPEG/PNG/DICOM)") from exc


def preprocess(image: np.ndarray, size: int, resize: str = "squash") -> np.ndarray:
    """Resize a grey ``[0, 1]`` image to ``(size, size)``: the one resize of training and inference.

    Parameters
    ----------
    image : ndarray, float32, (H, W)
        Output of :func:`read_image`.
    size : int
        Side in pixels.
    resize : {"squash", "pad"}
        ``squash`` resizes the whole image to a square (aspect ratio not kept; what the
        ``xray-224`` copies did); ``pad`` keeps the aspect ratio and pads the short side with
        black (letterbox). Both use Pillow's bicubic filter with antialiasing on float data.

    Returns
    -------
    ndarray, float32, (size, size)
    """
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    if resize == "squash":
        out = img.resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(out, dtype=np.float32)
    elif resize == "pad":
        h, w = image.shape
        scale = size / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        small = np.asarray(img.resize((nw, nh), Image.Resampling.BICUBIC), dtype=np.float32)
        arr = np.zeros((size, size), dtype=np.float32)
        y0, x0 = (size - nh) // 2, (size - nw) // 2
        arr[y0 : y0 + nh, x0 : x0 + nw] = small
    else:
        raise ValueError(f"resize must be 'squash' or 'pad', not {resize!r}")
    return np.clip(arr, 0.0, 1.0)


def load_image(
    path: str | Path, size: int, resize: str = "squash", jpeg_draft: bool = True
) -> np.ndarray:
    """:func:`read_image` then :func:`preprocess`: a ``(size, size)`` float32 array in [0, 1]."""
    draft = 2 * size if jpeg_draft else None
    return preprocess(read_image(path, draft_size=draft), size, resize)


# ----------------------------------------------------------------------------------- hashing
def content_hash(path: str | Path) -> str:
    """SHA-256 (hex) of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- splits
def patient_split(
    records: Sequence[ImageRecord], val_fraction: float, seed: int = 0
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Split into (train, val) so that no patient is in both, stratified by class.

    Uses scikit-learn's ``StratifiedGroupKFold`` with ``round(1 / val_fraction)`` folds and
    takes the first fold as validation.

    Parameters
    ----------
    records : sequence of ImageRecord
        Labelled images.
    val_fraction : float
        Wanted validation share, in (0, 0.5].
    seed : int
        Shuffling seed (same seed, same split).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5], not {val_fraction}")
    records = list(records)
    n_splits = max(2, round(1 / val_fraction))
    labels = np.array([r.label for r in records])
    groups = np.array([r.patient_id for r in records])
    n_patients = len(set(groups.tolist()))
    if n_patients < n_splits:
        raise DatasetError(
            f"only {n_patients} patients: too few for a {val_fraction:.0%} patient-disjoint split"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(records)), labels, groups))
    return [records[i] for i in train_idx], [records[i] for i in val_idx]


def shared_patients(a: Sequence[ImageRecord], b: Sequence[ImageRecord]) -> dict[str, int]:
    """Patient ids present in both sets, with the number of images of each in ``b``."""
    ids_a = {r.patient_id for r in a}
    return dict(sorted(Counter(r.patient_id for r in b if r.patient_id in ids_a).items()))


class LeakageError(ValueError):
    """Evaluation images whose content hash is in the model's training set."""


def leakage_check(
    hashes: dict[str, str],
    train_hashes: set[str] | frozenset[str],
    *,
    allow: bool = False,
) -> list[str]:
    """Refuse evaluation images that the model was trained on (same bytes).

    Parameters
    ----------
    hashes : dict
        ``{file: sha256}`` of the evaluation images.
    train_hashes : set of str
        SHA-256 of every training image (stored in the checkpoint).
    allow : bool
        Only warn instead of raising (the ``allow_train_overlap`` override).

    Returns
    -------
    list of str
        The files that were in training.

    Raises
    ------
    LeakageError
        When any file is in the training set and ``allow`` is false.
    """
    leaked = sorted(f for f, h in hashes.items() if h in train_hashes)
    if leaked and not allow:
        shown = ", ".join(leaked[:5]) + (" ..." if len(leaked) > 5 else "")
        raise LeakageError(
            f"{len(leaked)} of {len(hashes)} evaluation images are byte-identical to training "
            f"images of this checkpoint (e.g. {shown}); refusing to evaluate on training data. "
            "Pass allow_train_overlap=true to override."
        )
    if leaked:
        log.warning("%d evaluation images are in the training set (override given)", len(leaked))
    return leaked


# ----------------------------------------------------------------------------------- torch
def make_augment(cfg: dict | None):
    """Radiograph augmentation on ``(1, S, S)`` tensors in [0, 1], or ``None``.

    Small affine (rotation, translation, scale), brightness/contrast jitter, optional gamma,
    horizontal flip only when ``hflip`` is set (anatomy is not left-right symmetric).

    Parameters
    ----------
    cfg : dict
        Keys ``degrees`` (deg), ``translate`` (fraction), ``scale`` ([lo, hi]), ``brightness``,
        ``contrast`` (jitter factors), ``gamma`` ([lo, hi] or null), ``hflip`` (bool).
    """
    if not cfg or not cfg.get("enabled", True):
        return None
    import torch
    from torchvision.transforms import v2

    steps = []
    if cfg.get("degrees") or cfg.get("translate") or cfg.get("scale"):
        t = cfg.get("translate") or 0.0
        steps.append(
            v2.RandomAffine(
                degrees=cfg.get("degrees") or 0.0,
                translate=(t, t) if t else None,
                scale=tuple(cfg["scale"]) if cfg.get("scale") else None,
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        )
    if cfg.get("brightness") or cfg.get("contrast"):
        steps.append(
            v2.ColorJitter(brightness=cfg.get("brightness") or 0, contrast=cfg.get("contrast") or 0)
        )
    if cfg.get("hflip"):
        steps.append(v2.RandomHorizontalFlip())
    gamma = cfg.get("gamma")

    def apply(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        if gamma:
            g = float(torch.empty(()).uniform_(float(gamma[0]), float(gamma[1])))
            x = x.clamp(0, 1) ** g
        return x.clamp(0, 1)

    return apply if steps or gamma else None


class XrayDataset:
    """Map-style dataset: ``(image (1, S, S) float32 in [0, 1], label)``.

    Parameters
    ----------
    records : sequence of ImageRecord
        Images (``label`` None becomes -1).
    size, resize, jpeg_draft
        See :func:`load_image`.
    augment : callable, optional
        Tensor transform from :func:`make_augment` (training only).
    cache : bool
        Keep decoded, resized images in memory (float32, 200 KB per image at 224 px, per
        worker process: use with ``persistent_workers``).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        size: int,
        resize: str = "squash",
        jpeg_draft: bool = True,
        augment=None,
        cache: bool = False,
    ) -> None:
        self.records = list(records)
        self.size, self.resize, self.jpeg_draft = size, resize, jpeg_draft
        self.augment = augment
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> np.ndarray:
        """The preprocessed ``(S, S)`` float32 image."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        arr = load_image(self.records[index].path, self.size, self.resize, self.jpeg_draft)
        if self._cache is not None:
            self._cache[index] = arr
        return arr

    def __getitem__(self, index: int):
        import torch

        x = torch.from_numpy(self.image(index)).unsqueeze(0)
        if self.augment is not None:
            x = self.augment(x)
        label = self.records[index].label
        return x, -1 if label is None else int(label)
