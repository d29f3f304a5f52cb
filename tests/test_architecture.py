"""Layering of the package (docs/architecture.md): checked on the import graph and the source.

* ``medscan.io`` never imports ``medscan.ct`` (a fresh interpreter imports every io module);
* ``medscan.volume`` and ``medscan.io.case`` import in either order (no cycle);
* exactly one place assembles and writes ``manifest.json``, and one reads it;
* the napari package imports library modules, never the job modules.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "medscan"
IO_MODULES = sorted(f"medscan.io.{p.stem}" for p in (PACKAGE / "io").glob("*.py")
                    if p.stem != "__init__")


def _imported(code: str) -> set[str]:
    """The medscan modules loaded after running ``code`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\n"
         "print('\\n'.join(m for m in sys.modules if m.startswith('medscan')))"],
        capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


def test_io_never_imports_ct():
    loaded = _imported("\n".join(f"import {m}" for m in IO_MODULES))
    assert set(IO_MODULES) <= loaded
    assert not {m for m in loaded if m.startswith(("medscan.ct", "medscan.napari",
                                                   "medscan.xray", "medscan.batch"))}


@pytest.mark.parametrize("first, second", [("medscan.volume", "medscan.io.case"),
                                           ("medscan.io.case", "medscan.volume"),
                                           ("medscan.case", "medscan.io"),
                                           ("medscan.io.nifti", "medscan.case")])
def test_no_import_cycle(first, second):
    loaded = _imported(f"import {first}\nimport {second}\nimport medscan.io\n"
                       "assert medscan.io.write_case and medscan.io.read_case")
    assert {first, second} <= loaded


def test_case_module_imports_no_ct_and_no_writer():
    loaded = _imported("import medscan.case")
    assert not {m for m in loaded if m.startswith("medscan.ct")}
    assert "medscan.io.case" not in loaded and "medscan.io.mesh" not in loaded


def _sources(exclude: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text(encoding="utf-8")
            for p in PACKAGE.rglob("*.py") if not str(p.relative_to(PACKAGE)).startswith(exclude)}


def test_one_manifest_builder_and_one_manifest_reader():
    sources = _sources()
    literal = {f for f, text in sources.items() if '"manifest.json"' in text}
    assert literal == {"io/layout.py"}, "file names are constants of medscan/io/layout.py"
    writes = {f for f, text in sources.items()
              if re.search(r"write_\w+\(.*MANIFEST", text)}
    assert writes == {"io/case.py"}
    assert len(re.findall(r"write_\w+\(.*MANIFEST", sources["io/case.py"])) == 1
    assert "def build_manifest(" in sources["io/case.py"]
    reads = {f for f, text in sources.items() if re.search(r"read_json\(.*MANIFEST", text)}
    assert reads == {"io/layout.py"}  # read_manifest; read_case and the commit use it


def test_napari_imports_library_modules_only():
    for name, text in _sources().items():
        if name.startswith("napari/"):
            assert not re.search(r"medscan\.ct\.job|medscan_jobs|^from jobs|^import jobs",
                                 text, re.M), name
