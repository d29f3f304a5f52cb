"""napari sample data: the embedded CC BY 4.0 chest CT (File > Open Sample > medscan)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from medscan.napari._reader import read_dicom
from medscan.napari.layers import LayerDataTuple

SAMPLE_CT = "ct-lungdx-a0002-b40f"


def sample_ct_path() -> Path:
    """Folder of the embedded 30-slice chest CT (Lung-PET-CT-Dx A0002, CC BY 4.0)."""
    return Path(str(files("medscan") / "sample" / SAMPLE_CT))


def sample_ct() -> list[LayerDataTuple]:
    """The embedded chest CT as a HU image in the medscan world (via the DICOM loader)."""
    return read_dicom(sample_ct_path())
