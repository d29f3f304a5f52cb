"""``medscan predict``: PNEUMONIA/NORMAL for images or folders; Grad-CAM on request."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

log = logging.getLogger("medscan.predict")


@hydra.main(config_path="pkg://medscan_conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> int:
    from medscan.io.atomic import write_csv
    from medscan.xray.data import DatasetError, find_images
    from medscan.xray.infer import PREDICTION_COLUMNS, predict_images, resolve_threshold
    from medscan.xray.model import load_checkpoint

    inputs = list(cfg.input) if isinstance(cfg.input, ListConfig) else [cfg.input]
    try:
        model, info = load_checkpoint(cfg.checkpoint)
        threshold = resolve_threshold(info, cfg.threshold)
        found = find_images(inputs)
        if not found.images and not found.unreadable:
            raise DatasetError(f"no images found in {[str(i) for i in inputs]}")
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc
    for path, reason in found.ignored:  # every file left out is named
        log.warning("%s: ignored (%s)", path, reason)
    rows = predict_images(model, info, found.images, threshold=threshold,
                          batch_size=cfg.batch_size, tta=cfg.tta)
    for path, reason in found.unreadable:
        log.error("%s: %s", path, reason)
        rows.append({"file": str(path), "label": "", "prob_pneumonia": None, "pred": "",
                     "error": reason})
    out = Path(cfg.output)
    write_csv(out / "predictions.csv", rows, (*PREDICTION_COLUMNS, "error"))
    if found.ignored:
        write_csv(out / "ignored.csv",
                  [{"file": str(p), "reason": r} for p, r in found.ignored], ("file", "reason"))
    if cfg.gradcam:
        _write_gradcams(model, info, rows, threshold, out / "gradcam")
    failed = [r for r in rows if r["error"]]
    log.info("%d images -> %s (%d unreadable, %d other files ignored%s)", len(rows),
             out / "predictions.csv", len(failed), len(found.ignored),
             ", listed in ignored.csv" if found.ignored else "")
    if failed:
        raise SystemExit(1)
    return 0


def _write_gradcams(model, info: dict, rows: list[dict], threshold: float, folder: Path) -> None:
    """One Grad-CAM figure per readable image, on the original film (per-item errors)."""
    from medscan.xray.explain import gradcam_figure, save_png

    names: set[str] = set()
    for row in rows:
        if row["error"]:
            continue
        name = Path(row["file"]).stem
        while name in names:  # same stem in two folders
            name += "_"
        names.add(name)
        try:
            figure, _ = gradcam_figure(model, info, row["file"], threshold)
            save_png(figure, folder / f"{name}.png")
        except Exception as exc:  # one image's Grad-CAM never ends the batch
            row["error"] = f"Grad-CAM failed ({type(exc).__name__}: {exc})"
            log.error("%s: %s", row["file"], row["error"])


if __name__ == "__main__":
    main()
