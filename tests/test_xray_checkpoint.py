"""The X-ray ``Checkpoint`` dataclass: stored as the plain ``medscan-xray-1`` dict, old dicts
still load, writes are atomic; the single-process distributed helpers are no-ops."""

from __future__ import annotations

import pytest
import torch

from medscan.hpc import DistEnv
from medscan.xray.checkpoint import FORMAT, Checkpoint

#: Keys of a CNN ``last.pt`` as the loop wrote them before the dataclass, in that order.
OLD_KEYS = ["format", "model_state", "config", "threshold", "threshold_method", "epoch",
            "global_step", "val_metrics", "optimizer_state", "scheduler_state", "scaler_state",
            "best_score", "best_epoch", "bad_epochs", "history", "finished", "stopped",
            "train_hashes", "val_hashes", "train_patients", "train_config"]


def _old_probe_dict() -> dict:
    """A probe checkpoint as written before the dataclass: no optimiser/scheduler/scaler."""
    return {"format": FORMAT, "model_state": {"head.weight": torch.ones(1, 3)},
            "config": {"kind": "probe", "model_name": "probe", "classes": ["N", "P"]},
            "threshold": 0.4, "threshold_method": "youden", "epoch": 0, "global_step": 0,
            "val_metrics": {"val_roc_auc": 0.9}, "best_score": 0.9, "best_epoch": 0,
            "history": [{"epoch": 0}], "finished": True, "stopped": "probe fitted",
            "train_hashes": ["a"], "val_hashes": ["b"], "train_patients": ["p1"],
            "train_config": "{}", "a_future_key": [1, 2]}


def test_stored_form_is_the_plain_dict(tmp_path):
    ckpt = Checkpoint(model_state={"w": torch.arange(3.0)}, config={"model_name": "resnet18"},
                      threshold=0.3, epoch=2, history=[{"epoch": 0}, {"epoch": 1}])
    path = ckpt.save(tmp_path / "sub" / "last.pt")
    raw = torch.load(path, weights_only=True)  # readable without medscan
    assert list(raw) == OLD_KEYS
    assert raw["format"] == FORMAT and raw["threshold"] == 0.3 and raw["epoch"] == 2
    assert torch.equal(raw["model_state"]["w"], torch.arange(3.0))
    back = Checkpoint.load(path)
    assert back.history == ckpt.history and back.extra == {}
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left


def test_old_probe_checkpoint_loads_and_round_trips(tmp_path):
    old = _old_probe_dict()
    torch.save(old, tmp_path / "best.pt")
    ckpt = Checkpoint.load(tmp_path / "best.pt")
    assert ckpt.threshold == 0.4 and ckpt.finished and ckpt.stopped == "probe fitted"
    assert ckpt.optimizer_state == {} and ckpt.bad_epochs == 0  # defaults for missing keys
    assert ckpt.extra == {"a_future_key": [1, 2]}
    again = ckpt.to_dict()
    assert {k: v for k, v in again.items() if k in old and k != "model_state"} == {
        k: v for k, v in old.items() if k != "model_state"}


def test_for_inference_drops_optimiser_state_only():
    ckpt = Checkpoint(model_state={}, config={}, optimizer_state={"state": {1: 2}},
                      scheduler_state={"last_epoch": 3}, scaler_state={"scale": 2.0})
    best = ckpt.for_inference()
    assert best.optimizer_state == {} and best.scheduler_state == {}
    assert best.scaler_state == {"scale": 2.0} and ckpt.optimizer_state == {"state": {1: 2}}


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: not a medscan X-ray checkpoint"):
        Checkpoint.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.pt: not a loadable"):
        Checkpoint.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        Checkpoint.load(tmp_path / "missing.pt")


def test_failed_save_leaves_no_file(tmp_path):
    ckpt = Checkpoint(model_state={}, config={"unpicklable": lambda: 0})
    with pytest.raises(Exception):  # noqa: B017 - pickle's error type varies by version
        ckpt.save(tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_single_process_setup_and_collectives(monkeypatch):
    from medscan.xray.distributed import any_rank, from_main, gather, setup_distributed

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(var, raising=False)
    device, env = setup_distributed("cpu")
    assert device == torch.device("cpu") and env == DistEnv() and not env.enabled
    assert not torch.distributed.is_initialized()
    assert gather(5, env) == [5] and any_rank(True, env) and from_main("x", env) == "x"
