"""Issue 15 (performance): the cheap paths give the same results as the full ones.

No timing asserts here (benchmarks/end_to_end.py measures); these tests prove that the fast
paths (static ``--help``, lazy SciPy, no config composition for given inputs) change nothing a
user sees.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from medscan.cli import HYDRA_JOBS, static_help
from medscan.cli import main as cli_main


def _hydra_help(job: str, capsys: pytest.CaptureFixture[str]) -> str:
    """The help Hydra itself prints for ``job`` (the job module's ``main`` with ``--help``)."""
    module = importlib.import_module(f"medscan_jobs.{job}")
    argv = sys.argv
    sys.argv = [f"medscan {job}", "--help"]
    try:
        with pytest.raises(SystemExit):
            module.main()
    finally:
        sys.argv = argv
    return capsys.readouterr().out


@pytest.mark.parametrize("job", list(HYDRA_JOBS))
def test_static_help_is_hydras_help(job, capsys):
    text = static_help(job)
    if text is None:
        pytest.skip(f"{job}'s help template has placeholders: Hydra prints it")
    assert cli_main([job, "--help"]) == 0
    fast = capsys.readouterr().out
    assert fast == text + "\n"
    assert fast == _hydra_help(job, capsys)


def test_help_and_cpu_backend_import_no_scipy_or_hydra():
    code = (
        "import sys\n"
        "from medscan.cli import main\n"
        "assert main(['segment', '--help']) == 0\n"
        "assert 'hydra' not in sys.modules, 'hydra imported for --help'\n"
        "from medscan.backend import get_backend\n"
        "be = get_backend('cpu')\n"
        "assert 'scipy' not in sys.modules, 'scipy imported by the cpu backend'\n"
        "import numpy as np\n"
        "lab, n = be.ndi.label(np.array([1, 0, 1]))\n"
        "assert n == 2 and 'scipy.ndimage' in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_lazy_ndimage_is_scipy_ndimage():
    import scipy.ndimage as ndi

    from medscan.backend import get_backend

    be = get_backend("cpu")
    assert be.ndi.binary_erosion is ndi.binary_erosion
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    assert np.array_equal(be.ndi.binary_erosion(mask), ndi.binary_erosion(mask))


@pytest.mark.parametrize("value", ["[a,b]", "${oc.env:HOME}", "null"])
def test_inputs_hydra_must_parse_are_still_composed(value, tmp_path, capsys, monkeypatch):
    """Values the fast input check cannot judge go through Hydra's composition as before."""
    monkeypatch.chdir(tmp_path)
    from medscan import cli

    called = []
    monkeypatch.setattr(cli, "_check_path", lambda *a: called.append(a))
    cli.check_inputs("segment", [f"input={value}", "output=out"], multirun=False)
    if value == "null":
        assert called == []  # null: the embedded sample, nothing to check
    else:
        assert called  # composed and checked


@pytest.mark.parametrize("level", [None, 1, 6])
def test_nifti_gzip_is_valid_for_independent_readers(tmp_path, level):
    """ISA-L (default) and zlib members: one gzip stream for stdlib gzip, nibabel and ITK."""
    import gzip

    import nibabel as nib
    import SimpleITK as sitk

    from medscan.io.nifti import _VOX_OFFSET, write_nifti

    rng = np.random.default_rng(15)
    # > 8 MiB: several gzip members; smooth + noisy so it compresses like CT
    data = (np.cumsum(rng.integers(-3, 4, size=(40, 256, 512)), axis=2) - 1000).astype(np.int16)
    affine = np.diag([-0.7, -0.7, 1.25, 1.0])
    path = write_nifti(tmp_path / "v.nii.gz", data, affine, level=level)
    raw = gzip.decompress(path.read_bytes())
    assert raw[_VOX_OFFSET:] == data.tobytes()
    img = nib.load(str(path))
    assert np.array_equal(np.asarray(img.dataobj), data.transpose(2, 1, 0))
    np.testing.assert_allclose(img.affine, affine)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), data)


def test_preview_mesh_decimation_is_deterministic(sample_ct):
    """The preview decimates each mesh once for its three views instead of once per view: the
    same picture only if decimating the same mesh twice gives the same mesh."""
    from medscan.ct.mesh import MeshParams, label_surface
    from medscan.ct.render import preview_mesh
    from medscan.ct.segment import segment
    from medscan.ct.tissues import default_tissues
    from medscan.dicom import load_path

    volume = load_path(sample_ct)
    tissues = default_tissues()
    seg = segment(volume, tissues)
    mesh = label_surface(seg.labels, tissues["bone"].label, volume.affine,
                         MeshParams(max_faces=0))
    assert mesh is not None and len(mesh.faces) > 2000
    a, b = preview_mesh(mesh, 2000), preview_mesh(mesh, 2000)
    assert len(a.faces) < len(mesh.faces)
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
    assert preview_mesh(a, len(a.faces)) is a  # small meshes are drawn as they are


# ------------------------------------------------------------- scratch= (node-local build) --

def _entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_scratch_build_commits_into_output_and_leaves_nothing(tmp_path):
    from medscan.batch import case_writer

    out, scratch = tmp_path / "out", tmp_path / "node" / "tmp"
    with case_writer(out, "ct-x", scratch=scratch) as write:
        assert write.path.parent == scratch  # built on the node-local disk
        assert [p for p in _entries(out) if p.startswith(".tmp-")] == []
        (write.path / "meshes").mkdir()
        (write.path / "meshes" / "a.ply").write_bytes(b"ply")
        (write.path / "manifest.json").write_text('{"status": "ok", "input_hash": "i"}')
    assert write.committed
    assert _entries(out / "ct-x") == ["manifest.json", "meshes"]
    assert (out / "ct-x" / "meshes" / "a.ply").read_bytes() == b"ply"
    assert _entries(scratch) == []
    assert [p for p in _entries(out) if p.startswith(".")] == []  # no temp folder, no lease


def test_scratch_failure_leaves_old_case_and_no_leftovers(tmp_path):
    from medscan.batch import case_writer

    out, scratch = tmp_path / "out", tmp_path / "scratch"
    with case_writer(out, "ct-x", scratch=scratch) as write:
        (write.path / "manifest.json").write_text('{"status": "ok", "input_hash": "i"}')
    with pytest.raises(RuntimeError), case_writer(out, "ct-x", scratch=scratch) as write:
        (write.path / "half.nii.gz").write_bytes(b"x")
        raise RuntimeError("killed mid-case")
    # a failed result of the same inputs does not replace the ok case either
    with case_writer(out, "ct-x", scratch=scratch) as write:
        (write.path / "manifest.json").write_text('{"status": "failed", "input_hash": "i"}')
    assert write.kept and not write.committed
    assert _entries(out / "ct-x") == ["manifest.json"]
    assert '"ok"' in (out / "ct-x" / "manifest.json").read_text()
    assert _entries(scratch) == []
    assert [p for p in _entries(out) if p.startswith(".")] == []


def test_segment_with_scratch_writes_the_same_case(sample_ct, tmp_path, monkeypatch):
    """The job with ``scratch=`` (given as ``$VAR``) writes the same files and labels."""
    import nibabel as nib

    monkeypatch.setenv("MEDSCAN_ID_SECRET", "perf-test-secret-16b")
    monkeypatch.setenv("NODE_TMP", str(tmp_path / "node"))
    monkeypatch.chdir(tmp_path)
    fast = ["progress=false", "preview=false", "mesh_labels=[lung_left]", "mesh_formats=[ply]"]
    assert cli_main(["segment", f"input={sample_ct}", "output=plain", *fast]) == 0
    assert cli_main(["segment", f"input={sample_ct}", "output=scratched", "scratch=$NODE_TMP",
                     *fast]) == 0
    (case,) = [p.name for p in (tmp_path / "plain").iterdir() if p.name.startswith("ct-")]
    a, b = tmp_path / "plain" / case, tmp_path / "scratched" / case
    assert _entries(a) == _entries(b) and _entries(a / "meshes") == _entries(b / "meshes")
    assert np.array_equal(np.asarray(nib.load(a / "labels.nii.gz").dataobj),
                          np.asarray(nib.load(b / "labels.nii.gz").dataobj))
    assert (a / "meshes" / "lung_left.ply").read_bytes() == (
        b / "meshes" / "lung_left.ply").read_bytes()
    assert (tmp_path / "node").is_dir() and _entries(tmp_path / "node") == []  # used, emptied


def test_preload_imports_the_case_modules_once_in_a_daemon_thread():
    code = textwrap.dedent("""
        import sys
        from medscan.ct.analyse import CASE_MODULES, preload_modules
        names = [e.partition(":")[0] for e in CASE_MODULES]
        assert not any(n in sys.modules for n in ("trimesh", "cc3d", "fast_simplification"))
        thread = preload_modules()
        assert thread.daemon and thread.name == "medscan-preload"
        thread.join(120)
        missing = [n for n in names if n not in sys.modules]
        assert not missing, missing
        assert "skimage.measure._marching_cubes_lewiner" in sys.modules  # loaded on use
        assert preload_modules() is None  # once per process
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
