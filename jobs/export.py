"""``medscan export``: ONNX + TorchScript export of a checkpoint, verified against PyTorch."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger("medscan.export")


@hydra.main(config_path="pkg://medscan_conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> int:
    import numpy as np

    from medscan.xray.data import SAMPLE_ROOT, list_images, load_for_model
    from medscan.xray.export import compare_exports, export_model
    from medscan.xray.model import load_checkpoint

    try:
        model, info = load_checkpoint(cfg.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc
    files = export_model(model, info, cfg.output, tuple(cfg.formats))
    log.info("exported %s", files)
    if cfg.verify:
        images = np.stack([load_for_model(p, info) for p in list_images([SAMPLE_ROOT])])
        diffs = compare_exports(model, files, images)
        log.info("max |P(PNEUMONIA) difference| vs PyTorch on %d sample images: %s",
                 len(images), diffs)
        bad = {k: v for k, v in diffs.items() if v > cfg.tolerance}
        if bad:
            log.error("exported models disagree with PyTorch beyond %g: %s", cfg.tolerance, bad)
            raise SystemExit(1)
    return 0


if __name__ == "__main__":
    main()
