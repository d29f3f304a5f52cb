"""``medscan evaluate``: clinical metrics of a checkpoint on a labelled folder."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger("medscan.evaluate")


@hydra.main(config_path="pkg://medscan_conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> int:
    from medscan.xray.data import SAMPLE_ROOT, DatasetError, LeakageError
    from medscan.xray.infer import evaluate_folder
    from medscan.xray.model import load_checkpoint

    try:
        model, info = load_checkpoint(cfg.checkpoint)
        result = evaluate_folder(
            model, info, cfg.data.root or SAMPLE_ROOT, cfg.data.split, cfg.output,
            threshold=cfg.threshold, allow_train_overlap=cfg.allow_train_overlap,
            holdout=cfg.data.holdout, patient_regex=cfg.data.patient_regex,
            n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, batch_size=cfg.batch_size, tta=cfg.tta,
        )
    except (DatasetError, LeakageError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc
    m = result["metrics"]
    log.info(
        "n=%d accuracy %.4f [%s] sensitivity %.4f specificity %.4f ROC-AUC %.4f [%s] -> %s",
        m["n"], m["accuracy"], _ci(m, "accuracy"), m["recall"], m["specificity"], m["roc_auc"],
        _ci(m, "roc_auc"), cfg.output,
    )
    if result["skipped"]:
        log.error("%d files could not be read (see evaluation.json)", len(result["skipped"]))
        raise SystemExit(1)
    return 0


def _ci(m: dict, key: str) -> str:
    ci = (m.get("ci") or {}).get(key)
    return "n/a" if not ci else f"{ci[0]:.4f}-{ci[1]:.4f}"


if __name__ == "__main__":
    main()
