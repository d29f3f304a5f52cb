"""Parallel meshing (``parallel_meshes``): the costliest mesh in a contained worker process.

The parallel path must give the serial path's case exactly: mesh arrays, PLY/GLB bytes,
metrics and preview. A crash of the native mesh code in the worker fails that case with a
reason naming the mesh; the batch goes on. No timing asserts (docs/performance.md has them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import medscan.ct.analyse as analyse_mod
from medscan.backend import get_backend
from medscan.ct.analyse import CaseOptions, analyse, case_config, parallel_meshes
from medscan.ct.mesh import label_crop, label_surface, mesh_from_arrays
from medscan.dicom import contain, load_path
from medscan.hashing import config_hash
from medscan.io.mesh import mesh_bytes


@pytest.fixture(scope="module")
def sample_volume(sample_ct):
    return load_path(sample_ct, uniform=True)


@pytest.fixture
def two_cpus(monkeypatch):
    """The parallel path whatever this machine's CPU count (the result must not depend on it)."""
    monkeypatch.setattr(analyse_mod, "usable_cpus", lambda: 2)


def _run(volume, parallel: bool, **changes):
    options = dataclasses.replace(CaseOptions.defaults(), parallel_meshes=parallel, **changes)
    return analyse(volume, options)


def assert_same_case(serial, parallel) -> None:
    """Everything a case writes from its meshes is equal (arrays bit for bit, file bytes)."""
    assert "mesh.worker" in parallel.timings_s and "mesh.worker" not in serial.timings_s
    assert list(parallel.surfaces) == list(serial.surfaces)  # mesh_labels' order
    assert serial.surfaces, "nothing meshed: the comparison would be empty"
    for name, a in serial.surfaces.items():
        b = parallel.surfaces[name]
        for x, y in ((a.vertices, b.vertices), (a.faces, b.faces)):
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert np.array_equal(x, y), name
        for fmt in ("ply", "glb", "stl", "obj"):
            assert mesh_bytes(a, fmt, (200, 100, 50), {"tissue": name}) == mesh_bytes(
                b, fmt, (200, 100, 50), {"tissue": name}), (name, fmt)
    assert json.dumps(parallel.metrics, sort_keys=True) == json.dumps(serial.metrics,
                                                                      sort_keys=True)
    areas = {n: s["surface_area_mm2"] for n, s in parallel.metrics["structures"].items()
             if n in parallel.surfaces}
    assert all(a is not None and a > 0 for a in areas.values()), areas
    assert parallel.preview_png == serial.preview_png  # drawn in the worker / here
    assert "preview.worker" in parallel.timings_s and "preview.worker" not in serial.timings_s
    assert (parallel.status, parallel.reason) == (serial.status, serial.reason)
    assert [f.code for f in parallel.findings] == [f.code for f in serial.findings]


def test_parallel_meshes_equal_the_serial_ones_on_the_sample(sample_volume, two_cpus):
    assert_same_case(_run(sample_volume, False), _run(sample_volume, True))


@pytest.mark.slow
def test_parallel_meshes_equal_the_serial_ones_on_ricord(shared_ct, two_cpus):
    """RICORD, 255 slices: bone's 780k-face surface decimated in the worker."""
    volume = load_path(shared_ct / "ricord-1a-000082-jpegll", uniform=True)
    assert_same_case(_run(volume, False), _run(volume, True))


def test_the_worker_gets_the_largest_box(sample_volume, two_cpus, monkeypatch):
    """The label sent to the worker is the one whose crop box is largest (bone on chest CT),
    and one label alone is meshed there too (it overlaps with the measurement)."""
    sent: list[str] = []
    submit = analyse_mod._Meshes._submit

    def spy(self, name, *args):
        sent.append(name)
        return submit(self, name, *args)

    monkeypatch.setattr(analyse_mod._Meshes, "_submit", spy)
    options = CaseOptions.defaults()
    labels = _run(sample_volume, False, preview=False).labels.array
    boxes = {n: label_crop(labels, options.tissues[n].label, sample_volume.affine,
                           options.mesh).mask.size for n in options.mesh_labels}
    result = _run(sample_volume, True, preview=False)
    assert sent == [max(boxes, key=boxes.get)] == ["bone"]
    assert set(result.surfaces) == set(options.mesh_labels)
    sent.clear()
    result = _run(sample_volume, True, preview=False, mesh_labels=["lung_left"])
    assert sent == ["lung_left"] and list(result.surfaces) == ["lung_left"]


def test_serial_with_one_cpu_on_the_gpu_or_when_switched_off(monkeypatch):
    options = CaseOptions.defaults()
    cpu = get_backend("cpu")
    assert options.parallel_meshes is True  # conf/segment.yaml's default
    monkeypatch.setattr(analyse_mod, "usable_cpus", lambda: 2)
    assert parallel_meshes(options, cpu)
    assert not parallel_meshes(dataclasses.replace(options, parallel_meshes=False), cpu)
    assert not parallel_meshes(options, SimpleNamespace(name="gpu"))
    monkeypatch.setattr(analyse_mod, "usable_cpus", lambda: 1)
    assert not parallel_meshes(options, cpu)


def test_usable_cpus_follow_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    assert analyse_mod.usable_cpus() == len(os.sched_getaffinity(0)) >= 1


def test_the_switch_is_not_part_of_the_config_hash():
    """A pure speed switch: cases written either way stay current for the other."""
    on = CaseOptions.defaults()
    off = dataclasses.replace(on, parallel_meshes=False)
    assert config_hash(case_config(on)) == config_hash(case_config(off))
    assert "parallel_meshes" not in case_config(on)
    cfg = {"tissues": on.tissues.to_config(), "parallel_meshes": False}
    assert CaseOptions.from_config(cfg).parallel_meshes is False
    assert CaseOptions.from_config({"tissues": on.tissues.to_config()}).parallel_meshes is True


def test_rebuilt_mesh_is_the_same_mesh(sample_volume):
    """mesh_from_arrays keeps the arrays as they are (no vertex merging) and the metadata."""
    options = CaseOptions.defaults()
    labels = _run(sample_volume, False, preview=False, mesh_labels=[]).labels.array
    mesh = label_surface(labels, options.tissues["lung_left"].label, sample_volume.affine,
                         options.mesh)
    again = mesh_from_arrays(mesh.vertices, mesh.faces, dict(mesh.metadata))
    assert np.array_equal(again.vertices, mesh.vertices)
    assert np.array_equal(again.faces, mesh.faces)
    assert again.metadata == mesh.metadata == {"processed": True}
    # with a duplicate vertex: trimesh's processing would merge it, the rebuild keeps it
    verts = np.vstack([mesh.vertices, mesh.vertices[:1]])
    assert len(mesh_from_arrays(verts, mesh.faces).vertices) == len(verts)


def _crash_hook(folder: Path, monkeypatch, once: bool) -> None:
    """Route the worker's mesh through a function that abort()s the worker process (as a
    native crash in marching cubes or the decimation would): always, or on its first call."""
    _hook(folder, monkeypatch, f"meshcrash_{'once' if once else 'always'}", f"""
        if {not once} or not MARK.exists():
            MARK.touch()
            state[0] = 1  # contain.STARTED: the crash names this mesh
            os.abort()
    """)


def _hook(folder: Path, monkeypatch, name: str, body: str, target: str = "mesh") -> None:
    """Route the worker's mesh (``target`` "mesh") or preview drawing ("preview") through
    ``body`` (then the real function) in module ``name``.

    The hook is a module in ``folder``, importable by fresh workers (PYTHONPATH) and here;
    ``body`` sees ``MARK`` (``folder/crashed`` for the mesh, ``folder/drawing`` for the preview).
    """
    import medscan.ct.render as render_mod

    owner, module_name, func, mark = {
        "mesh": (analyse_mod, "medscan.ct.mesh", "contained_surface", "crashed"),
        "preview": (render_mod, "medscan.ct.render", "render_contained", "drawing"),
    }[target]
    (folder / f"{name}.py").write_text(textwrap.dedent(f"""
        import os
        import time
        from pathlib import Path

        from {module_name} import {func}

        MARK = Path({str(folder / mark)!r})


        def hooked(out, state, *args):
    """) + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")
        + f"\n    return {func}(out, state, *args)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(folder)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = __import__(name)
    monkeypatch.setattr(owner, func, module.hooked)
    contain._shutdown()  # pooled workers started without the hook's folder on their path


@pytest.fixture
def fresh_workers():
    yield
    contain._shutdown()  # no worker with the test's PYTHONPATH is left for other tests


CRASH = re.compile(r"mesh of (\w+) failed in its worker process: crashed \(signal SIGABRT\)")


def test_worker_crash_fails_the_case_with_the_mesh_named(sample_volume, tmp_path, monkeypatch,
                                                         two_cpus, fresh_workers):
    _crash_hook(tmp_path, monkeypatch, once=False)
    result = _run(sample_volume, True, preview=False)
    assert result.status == "failed"
    match = CRASH.fullmatch(result.reason)
    assert match and match.group(1) == "bone", result.reason
    assert "mesh_failed" in {f.code for f in result.findings}
    assert list(result.surfaces) == ["lung_left", "lung_right"]  # meshed here, kept
    structures = result.metrics["structures"]
    assert structures["bone"]["surface_area_mm2"] is None
    assert structures["lung_left"]["surface_area_mm2"] > 0
    # the next case gets a new worker and its meshes
    monkeypatch.setattr(analyse_mod, "contained_surface",
                        sys.modules["medscan.ct.mesh"].contained_surface)
    assert _run(sample_volume, True, preview=False).status == "ok"


def test_worker_crash_in_a_batch_fails_one_case_and_the_batch_goes_on(
        sample_ct, tmp_path, monkeypatch, two_cpus, fresh_workers):
    from batch_inputs import series_copies

    from medscan.ct.job import run_segment
    from medscan.io import read_index
    from tests.test_segment_job import config

    tree = tmp_path / "in"
    series_copies(sample_ct, tree, 2)
    _crash_hook(tmp_path, monkeypatch, once=True)
    out = tmp_path / "out"
    assert run_segment(config(input=tree, output=out, progress=False, preview=False,
                              mesh_formats="[ply]")) == 1
    rows = sorted(read_index(out), key=lambda r: r["status"])
    assert [r["status"] for r in rows] == ["failed", "ok"], rows
    assert CRASH.fullmatch(rows[0]["reason"]), rows[0]["reason"]
    assert [p.parent.parent.name for p in out.glob("*/meshes/bone.ply")] == [rows[1]["case_id"]]


def test_warm_up_runs_every_mesh_step():
    """The warm-up request meshes a cube through decimation (so its imports are the real
    path's); in a worker process it is what analyse sends while segmenting."""
    from medscan.ct.mesh import warm_up

    faces = warm_up(np.zeros(1, np.uint8), np.zeros(1, np.int8))
    assert 0 < faces <= 16  # the cube's marching-cubes surface has hundreds: decimated
    _, faces_there = contain.run_contained(warm_up, (1,), np.uint8, [Path("warm-up")])
    assert faces_there == faces


def test_an_error_while_the_worker_meshes_kills_it(sample_volume, tmp_path, monkeypatch,
                                                   two_cpus, fresh_workers):
    """Ctrl-C (or any error) in analyse while the worker still meshes: the worker is killed
    (run_contained's cancel event) instead of meshing on in a thread the job waits for."""
    import threading

    _hook(tmp_path, monkeypatch, "meshsleep", """
        MARK.touch()
        time.sleep(120)
    """)

    def interrupted(*args, **kwargs):
        while not (tmp_path / "crashed").exists():  # the worker has the mesh
            time.sleep(0.05)
        raise KeyboardInterrupt

    import time

    monkeypatch.setattr(analyse_mod, "measure_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(sample_volume, True, preview=False)
    meshing = [t for t in threading.enumerate() if t.name.startswith("medscan-mesh")]
    for t in meshing:
        t.join(30)  # killed within about 0.2 s; 120 s if not
    assert not any(t.is_alive() for t in meshing)


def test_a_deferred_preview_is_the_serial_preview(sample_volume, two_cpus):
    """analyse(defer_preview=True), as the jobs call it: the PNG comes when the writer asks."""
    options = dataclasses.replace(CaseOptions.defaults(), parallel_meshes=True)
    deferred = analyse(sample_volume, options, defer_preview=True)
    assert deferred.preview_png is None and deferred.pending_preview is not None
    deferred.wait_preview()
    assert deferred.pending_preview is None and "preview.worker" in deferred.timings_s
    assert deferred.preview_png == _run(sample_volume, False).preview_png
    deferred.wait_preview()  # once taken, nothing pending: a no-op
    assert deferred.preview_png is not None


def test_a_crashed_preview_worker_gives_the_preview_drawn_here(sample_volume, tmp_path,
                                                               monkeypatch, two_cpus,
                                                               fresh_workers, caplog):
    _hook(tmp_path, monkeypatch, "previewcrash", """
        MARK.touch()
        os.abort()
    """, target="preview")
    with caplog.at_level("WARNING", logger="medscan.analyse"):
        parallel = _run(sample_volume, True)
    assert (tmp_path / "drawing").exists(), "the worker never got the drawing"
    assert parallel.status == "ok" and parallel.preview_png
    assert parallel.preview_png == _run(sample_volume, False).preview_png
    assert "preview.worker" not in parallel.timings_s  # no worker's drawing to time
    [warning] = [r.getMessage() for r in caplog.records if "preview" in r.getMessage()]
    assert "the preview's worker process failed (crashed (signal SIGABRT)" in warning
    assert sample_volume.case_id in warning


def test_a_hung_preview_worker_is_killed_after_the_time_limit(sample_volume, tmp_path,
                                                              monkeypatch, two_cpus,
                                                              fresh_workers, caplog):
    _hook(tmp_path, monkeypatch, "previewhang", """
        MARK.touch()
        time.sleep(120)
    """, target="preview")
    monkeypatch.setattr(analyse_mod, "PREVIEW_TIMEOUT_S", 2.0)
    with caplog.at_level("WARNING", logger="medscan.analyse"):
        parallel = _run(sample_volume, True)
    assert (tmp_path / "drawing").exists()
    assert parallel.preview_png == _run(sample_volume, False).preview_png
    [warning] = [r.getMessage() for r in caplog.records if "preview" in r.getMessage()]
    assert "the preview's worker process failed (timed out after 2 s and was killed)" in warning


def test_without_a_worker_the_preview_is_drawn_in_analyse(sample_volume, monkeypatch):
    """One CPU, parallel_meshes=false or the GPU: defer_preview changes nothing (no worker),
    so timings_s["preview"] is the whole drawing, as before the worker existed."""
    monkeypatch.setattr(analyse_mod, "usable_cpus", lambda: 1)
    options = dataclasses.replace(CaseOptions.defaults(), parallel_meshes=True)
    result = analyse(sample_volume, options, defer_preview=True)
    assert result.pending_preview is None and result.preview_png
    assert "preview.worker" not in result.timings_s


def test_an_interrupted_wait_for_the_preview_kills_its_worker(sample_volume, tmp_path,
                                                              monkeypatch, two_cpus,
                                                              fresh_workers):
    """Ctrl-C (or SIGTERM) while the writer waits for the preview: the worker is killed at
    once, not waited for by the interpreter's exit (found by a tester: 118 s)."""
    import signal
    import threading
    import time

    _hook(tmp_path, monkeypatch, "previewsleep2", """
        MARK.touch()
        time.sleep(120)
    """, target="preview")
    options = dataclasses.replace(CaseOptions.defaults(), parallel_meshes=True)
    result = analyse(sample_volume, options, defer_preview=True)
    while not (tmp_path / "drawing").exists():
        time.sleep(0.05)

    def ctrl_c(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, ctrl_c)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            result.wait_preview()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    drawing = [t for t in threading.enumerate() if t.name.startswith("medscan-mesh")]
    for t in drawing:
        t.join(30)  # killed within about 0.2 s; 120 s if not
    assert not any(t.is_alive() for t in drawing)


def test_a_discarded_preview_kills_its_worker(sample_volume, tmp_path, monkeypatch, two_cpus,
                                              fresh_workers):
    """The case's writing failed: the preview still being drawn is not waited for."""
    import threading
    import time

    _hook(tmp_path, monkeypatch, "previewsleep", """
        MARK.touch()
        time.sleep(120)
    """, target="preview")
    options = dataclasses.replace(CaseOptions.defaults(), parallel_meshes=True)
    result = analyse(sample_volume, options, defer_preview=True)
    while not (tmp_path / "drawing").exists():  # the worker has the drawing
        time.sleep(0.05)
    result.discard_preview()
    assert result.pending_preview is None and result.preview_png is None
    drawing = [t for t in threading.enumerate() if t.name.startswith("medscan-mesh")]
    for t in drawing:
        t.join(30)  # killed within about 0.2 s; 120 s if not
    assert not any(t.is_alive() for t in drawing)
