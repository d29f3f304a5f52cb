"""The one source of the CT defaults: the packaged ``conf/segment.yaml`` (``medscan_conf``).

``medscan segment`` composes that file with Hydra; the Python API reads the same file here, so
:class:`~medscan.ct.segment.SegmentParams`, :class:`~medscan.ct.mesh.MeshParams` and
:class:`~medscan.ct.analyse.CaseOptions` take their field defaults from it instead of repeating
the values (they once disagreed on the mesh formats, so the CLI and the API wrote different
files). Why the YAML and not Hydra structured configs: docs/architecture.md.
"""

from __future__ import annotations

import copy
import functools
from importlib.resources import files
from typing import Any


@functools.cache
def _packaged(name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((files("medscan_conf") / name).read_text(encoding="utf-8"))


def segment_defaults(section: str | None = None) -> Any:
    """``conf/segment.yaml`` as shipped (a copy), or one of its sections.

    Parameters
    ----------
    section : str, optional
        A top-level key, e.g. ``"segment"``, ``"mesh"``, ``"mesh_formats"``.

    Raises
    ------
    KeyError
        For an unknown section.
    """
    cfg = _packaged("segment.yaml")
    return copy.deepcopy(cfg if section is None else cfg[section])


def measure_defaults() -> dict[str, Any]:
    """``conf/metrics/default.yaml`` as shipped (a copy): the ``measure`` block of both jobs.

    ``medscan segment`` and ``medscan measure`` take it through their Hydra defaults list
    (``metrics: default``, packaged at ``measure``);
    :class:`~medscan.ct.measure.MeasureOptions` takes its field defaults from it.
    """
    return copy.deepcopy(_packaged("metrics/default.yaml"))


def tissue_defaults(name: str = "default") -> dict[str, Any]:
    """``conf/tissues/<name>.yaml`` as shipped (a copy)."""
    return copy.deepcopy(_packaged(f"tissues/{name}.yaml"))
