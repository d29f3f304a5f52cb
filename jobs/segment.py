"""``medscan segment``: CT series -> tissue/lung labels, metrics, meshes, previews (docs/ct.md)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="pkg://medscan_conf", config_name="segment", version_base="1.3")
def main(cfg: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from medscan.ct.job import run_segment

    plain = OmegaConf.to_container(cfg, resolve=True)
    code = run_segment(plain)  # type: ignore[arg-type]
    # Hydra drops the return value: exit with it in a single run. In a multirun (shards) an
    # exit would stop the sweep; each shard's cases carry their status in index.csv.
    if code and HydraConfig.get().mode != RunMode.MULTIRUN:
        raise SystemExit(code)
    return code


if __name__ == "__main__":
    main()
