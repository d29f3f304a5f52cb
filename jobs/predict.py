"""``medscan predict``: PNEUMONIA/NORMAL for images or folders; Grad-CAM on request."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

log = logging.getLogger("medscan.predict")


@hydra.main(config_path="pkg://medscan_conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> int:
    from medscan.xray.data import DatasetError, list_images
    from medscan.xray.infer import PREDICTION_COLUMNS, predict_images, write_csv
    from medscan.xray.model import load_checkpoint

    inputs = list(cfg.input) if isinstance(cfg.input, ListConfig) else [cfg.input]
    try:
        model, info = load_checkpoint(cfg.checkpoint)
        paths = list_images(inputs)
        rows = predict_images(model, info, paths, threshold=cfg.threshold,
                              batch_size=cfg.batch_size, tta=cfg.tta)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc
    out = Path(cfg.output)
    write_csv(out / "predictions.csv", rows, (*PREDICTION_COLUMNS, "error"))
    failed = [r for r in rows if r["error"]]
    if cfg.gradcam:
        from medscan.xray.explain import gradcam, save_png

        names: set[str] = set()
        for row in rows:
            if row["error"]:
                continue
            overlay, _ = gradcam(model, info, row["file"])
            name = Path(row["file"]).stem
            while name in names:  # same stem in two folders
                name += "_"
            names.add(name)
            save_png(overlay, out / "gradcam" / f"{name}.png")
    log.info("%d images -> %s (%d unreadable)", len(rows), out / "predictions.csv", len(failed))
    if failed:
        raise SystemExit(1)
    return 0


if __name__ == "__main__":
    main()
