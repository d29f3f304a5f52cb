"""``medscan train``: train the chest X-ray classifier (see docs/xray.md)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger("medscan.train")


@hydra.main(config_path="pkg://medscan_conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> int:
    from medscan.xray.data import DatasetError, ImageReadError
    from medscan.xray.model import PretrainedWeightsError
    from medscan.xray.train import train

    try:
        train(cfg)
    except (DatasetError, ImageReadError, PretrainedWeightsError, FileNotFoundError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc
    return 0


if __name__ == "__main__":
    main()
