"""Tissue table: HU bands, label ids and colours (from ``conf/tissues/*.yaml``).

A :class:`TissueTable` says how the label map is built:

* voxels outside the body are ``0`` (background);
* inside the body, each voxel gets the label of the HU *band* that contains its value
  (bands are half-open ``[hu_min, hu_max)``, ``None`` meaning unbounded); a voxel in no band
  gets the ``other`` label;
* the segmented lungs overwrite that with ``lung_left`` / ``lung_right`` (structures).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medscan.volume import Label

#: Structure names the lung segmentation writes.
LUNG_LEFT = "lung_left"
LUNG_RIGHT = "lung_right"


@dataclass(frozen=True)
class Tissue:
    """One label of the label map.

    Parameters
    ----------
    name : str
        Label name (file names of meshes use it).
    label : int
        Id in ``labels.nii.gz`` (1..255).
    color : tuple of int
        RGB, 0..255.
    hu_min, hu_max : float or None
        HU band ``[hu_min, hu_max)`` for band tissues; ``None`` = unbounded; both ``None`` for
        structures and the ``other`` label.
    source : str
        Literature reference of the band.
    """

    name: str
    label: int
    color: tuple[int, int, int]
    hu_min: float | None = None
    hu_max: float | None = None
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description."""
        return {
            "name": self.name,
            "label": self.label,
            "color": list(self.color),
            "hu_min": self.hu_min,
            "hu_max": self.hu_max,
            "source": self.source,
        }


@dataclass(frozen=True)
class TissueTable:
    """HU bands plus the fallback and the lung structures.

    Parameters
    ----------
    bands : list of Tissue
        Band tissues, checked in order (the first band containing a value wins).
    other : Tissue
        Label for body voxels in no band.
    structures : list of Tissue
        Labels written by segmentation (``lung_left``, ``lung_right``).
    name : str
        Name of the table (config name).
    """

    bands: list[Tissue]
    other: Tissue
    structures: list[Tissue] = field(default_factory=list)
    name: str = "default"

    def __post_init__(self) -> None:
        ids = [t.label for t in self.all]
        names = [t.name for t in self.all]
        if len(set(ids)) != len(ids) or len(set(names)) != len(names):
            raise ValueError(f"tissue table {self.name!r}: label ids and names must be unique")
        if any(not 0 < i < 256 for i in ids):
            raise ValueError(f"tissue table {self.name!r}: label ids must be in 1..255")
        for s in (LUNG_LEFT, LUNG_RIGHT):
            if s not in names:
                raise ValueError(f"tissue table {self.name!r} lacks the structure {s!r}")

    @property
    def all(self) -> list[Tissue]:
        """Every label: bands, other, structures."""
        return [*self.bands, self.other, *self.structures]

    def __getitem__(self, name: str) -> Tissue:
        for t in self.all:
            if t.name == name:
                return t
        raise KeyError(f"no tissue called {name!r} (known: {[t.name for t in self.all]})")

    def by_label(self) -> dict[int, Tissue]:
        """Map label id -> tissue."""
        return {t.label: t for t in self.all}

    def labels_dict(self) -> dict[str, dict[str, Any]]:
        """``{"<id>": {"name", "color"}}`` for manifests (JSON keys are strings)."""
        return {str(t.label): {"name": t.name, "color": list(t.color)} for t in self.all}

    def label_table(self) -> dict[int, Label]:
        """The label table of a :class:`~medscan.volume.LabelMap` made with this table."""
        return {t.label: Label(t.label, t.name, t.color) for t in self.all}

    def to_config(self) -> dict[str, Any]:
        """The table as the ``tissues`` config mapping (inverse of :meth:`from_config`)."""

        def spec(t: Tissue, band: bool) -> dict[str, Any]:
            out: dict[str, Any] = {"label": t.label, "color": list(t.color), "source": t.source}
            if band:
                out["hu"] = [t.hu_min, t.hu_max]
            return out

        return {
            "name": self.name,
            "bands": {t.name: spec(t, True) for t in self.bands},
            "other": {self.other.name: spec(self.other, False)},
            "structures": {t.name: spec(t, False) for t in self.structures},
        }

    def int16_lut(self) -> np.ndarray:
        """uint8 look-up table indexed by ``hu.view(uint16)`` for int16 HU values.

        ``lut[hu.view(np.uint16)]`` is the band label of every voxel (``other`` where no band
        matches), with a 2-byte index instead of a widened copy of the volume.
        """
        values = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16)
        values = values.astype(np.float64)
        lut = np.full(65536, self.other.label, dtype=np.uint8)
        assigned = np.zeros(65536, dtype=bool)
        for band in self.bands:
            inside = np.ones(65536, dtype=bool)
            if band.hu_min is not None:
                inside &= values >= band.hu_min
            if band.hu_max is not None:
                inside &= values < band.hu_max
            inside &= ~assigned
            lut[inside] = band.label
            assigned |= inside
        return lut

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TissueTable:
        """Build from the ``tissues`` config group (see ``conf/tissues/default.yaml``)."""

        def make(name: str, spec: Mapping[str, Any]) -> Tissue:
            hu = spec.get("hu") or [None, None]
            return Tissue(
                name=str(name),
                label=int(spec["label"]),
                color=tuple(int(c) for c in spec["color"]),  # type: ignore[arg-type]
                hu_min=None if hu[0] is None else float(hu[0]),
                hu_max=None if hu[1] is None else float(hu[1]),
                source=str(spec.get("source", "")),
            )

        bands = [make(n, s) for n, s in cfg["bands"].items()]
        other_name, other_spec = next(iter(cfg["other"].items()))
        structures = [make(n, s) for n, s in cfg["structures"].items()]
        return cls(
            bands=bands,
            other=make(other_name, other_spec),
            structures=structures,
            name=str(cfg.get("name", "custom")),
        )


def default_tissues() -> TissueTable:
    """The table of ``conf/tissues/default.yaml`` (read from the installed config package)."""
    from medscan.defaults import tissue_defaults

    return TissueTable.from_config(tissue_defaults())
