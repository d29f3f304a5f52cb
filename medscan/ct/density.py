"""Lung density bands: HU bands inside the lung mask, as mL and % (3D Slicer Lung CT Analyzer).

The bands (``conf/density/lcta.yaml``) are half-open ``[hu_min, hu_max)``, sorted and
contiguous. A lung voxel below the first band is counted as ``below_range``, one at or above
the last band's upper bound as ``above_range``: the band volumes plus these two always sum to
the lung volume (voxel counts, exactly).

Per group of lung voxels (a lung, both lungs, a region) :func:`band_summary` gives

* ``bands``: ``{name: {"ml", "percent"}}``, percent of the group's volume;
* ``parenchyma_ml`` = volume - the ``vessels`` band (vessels inside the lung mask are not
  parenchyma; Lung CT Analyzer subtracts them the same way);
* ``functional_ml`` / ``functional_percent``: the ``functional`` bands (``inflated``), percent of
  the parenchyma; ``affected_ml`` / ``affected_percent``: the ``affected`` bands (``infiltrated``
  + ``collapsed``), percent of the parenchyma.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Names of the two catch-all entries (lung voxels outside every band).
BELOW = "below_range"
ABOVE = "above_range"


@dataclass(frozen=True)
class DensityBand:
    """One HU band ``[hu_min, hu_max)`` with its literature source."""

    name: str
    hu_min: float
    hu_max: float
    source: str = ""


@dataclass(frozen=True)
class DensityBands:
    """Sorted, contiguous lung density bands and the derived groups.

    Parameters
    ----------
    bands : list of DensityBand
        From low to high HU; each ``hu_max`` equals the next band's ``hu_min``.
    vessels : str or None
        Band subtracted from the lung volume to give the parenchyma.
    functional, affected : list of str
        Bands summed into the functional / affected volumes.
    name, source : str
        Config name and reference.

    Raises
    ------
    ValueError
        Empty, unsorted, overlapping or gapped bands, duplicate names, or a group naming an
        unknown band.
    """

    bands: list[DensityBand]
    vessels: str | None = "vessels"
    functional: list[str] = field(default_factory=lambda: ["inflated"])
    affected: list[str] = field(default_factory=lambda: ["infiltrated", "collapsed"])
    name: str = "custom"
    source: str = ""

    def __post_init__(self) -> None:
        if not self.bands:
            raise ValueError(f"density bands {self.name!r}: no bands")
        names = [b.name for b in self.bands]
        if len(set(names)) != len(names) or {BELOW, ABOVE} & set(names):
            raise ValueError(f"density bands {self.name!r}: band names must be unique and not "
                             f"{BELOW!r}/{ABOVE!r}")
        for b in self.bands:
            if not b.hu_min < b.hu_max:
                raise ValueError(f"density band {b.name!r}: need hu_min < hu_max, got "
                                 f"[{b.hu_min}, {b.hu_max})")
        for a, b in zip(self.bands, self.bands[1:], strict=False):
            if a.hu_max != b.hu_min:
                raise ValueError(f"density bands {self.name!r}: {a.name!r} ends at {a.hu_max} "
                                 f"but {b.name!r} starts at {b.hu_min} (bands must be sorted "
                                 "and contiguous)")
        groups = [*self.functional, *self.affected] + ([self.vessels] if self.vessels else [])
        unknown = [g for g in groups if g not in names]
        if unknown:
            raise ValueError(f"density bands {self.name!r}: unknown band(s) {unknown}")

    @property
    def edges(self) -> np.ndarray:
        """Band edges, float64, ``len(bands) + 1`` values from low to high."""
        return np.array([self.bands[0].hu_min] + [b.hu_max for b in self.bands], np.float64)

    @property
    def entries(self) -> list[str]:
        """Names of the bins of :meth:`bin_index`: ``below_range``, the bands, ``above_range``."""
        return [BELOW, *(b.name for b in self.bands), ABOVE]

    def bin_index(self, hu: np.ndarray) -> np.ndarray:
        """Bin of every value: 0 below the first band, ``i + 1`` in band ``i``, last above.

        Parameters
        ----------
        hu : numpy.ndarray
            HU values, any shape and real dtype.

        Returns
        -------
        numpy.ndarray
            uint8 of the same shape (``numpy.digitize`` with ``right=False``: a value equal to
            an edge goes to the band that starts there).
        """
        return np.digitize(hu, self.edges, right=False).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe definition (for ``metrics.json``)."""
        return {
            "name": self.name, "source": self.source, "interval": "[hu_min, hu_max)",
            "bands": [{"name": b.name, "hu_min": b.hu_min, "hu_max": b.hu_max,
                       "source": b.source} for b in self.bands],
            "vessels": self.vessels, "functional": list(self.functional),
            "affected": list(self.affected),
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DensityBands:
        """Build from the ``density`` config group (``conf/density/lcta.yaml``)."""
        bands = [DensityBand(str(name), float(spec["hu"][0]), float(spec["hu"][1]),
                             str(spec.get("source", ""))) for name, spec in cfg["bands"].items()]
        vessels = cfg.get("vessels", "vessels")
        return cls(bands=bands, vessels=None if vessels is None else str(vessels),
                   functional=[str(b) for b in cfg.get("functional") or []],
                   affected=[str(b) for b in cfg.get("affected") or []],
                   name=str(cfg.get("name", "custom")), source=str(cfg.get("source", "")))


def default_density_bands() -> DensityBands:
    """The bands of ``conf/density/lcta.yaml`` (Lung CT Analyzer defaults)."""
    from importlib.resources import files

    import yaml

    text = (files("medscan_conf") / "density" / "lcta.yaml").read_text(encoding="utf-8")
    return DensityBands.from_config(yaml.safe_load(text))


def band_summary(counts: Sequence[int] | np.ndarray, bands: DensityBands,
                 voxel_volume_ml: float) -> dict[str, Any]:
    """Band volumes and percentages of one group of lung voxels from its bin counts.

    Parameters
    ----------
    counts : sequence of int
        Voxels per bin of :meth:`DensityBands.bin_index` (``len(bands.entries)`` values).
    bands : DensityBands
        The band definition.
    voxel_volume_ml : float
        Volume of one voxel (mL).

    Returns
    -------
    dict
        ``voxels, volume_ml, parenchyma_ml, functional_ml, functional_percent, affected_ml,
        affected_percent, bands: {name: {voxels, ml, percent}}`` (percent of ``volume_ml`` for
        the bands, of ``parenchyma_ml`` for functional/affected; ``None`` when the base is 0).
    """
    counts = [int(c) for c in counts]
    names = bands.entries
    if len(counts) != len(names):
        raise ValueError(f"{len(counts)} counts for {len(names)} bins")
    n = sum(counts)
    by_name = dict(zip(names, counts, strict=True))

    def pct(part: int, whole: int) -> float | None:
        return round(100.0 * part / whole, 3) if whole else None

    vessels = by_name[bands.vessels] if bands.vessels else 0
    parenchyma = n - vessels
    functional = sum(by_name[b] for b in bands.functional)
    affected = sum(by_name[b] for b in bands.affected)
    return {
        "voxels": n,
        "volume_ml": round(n * voxel_volume_ml, 3),
        "parenchyma_ml": round(parenchyma * voxel_volume_ml, 3),
        "functional_ml": round(functional * voxel_volume_ml, 3),
        "functional_percent": pct(functional, parenchyma),
        "affected_ml": round(affected * voxel_volume_ml, 3),
        "affected_percent": pct(affected, parenchyma),
        "bands": {name: {"voxels": c, "ml": round(c * voxel_volume_ml, 3), "percent": pct(c, n)}
                  for name, c in by_name.items()},
    }
