"""``medscan measure``: recompute metrics.json from existing label maps (docs/ct.md)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="pkg://medscan_conf", config_name="measure", version_base="1.3")
def main(cfg: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from medscan.ct.measure_job import run_measure

    plain = OmegaConf.to_container(cfg, resolve=True)
    code = run_measure(plain)  # type: ignore[arg-type]
    # as `segment`: exit with the code in a single run; a multirun (shards) keeps sweeping
    if code and HydraConfig.get().mode != RunMode.MULTIRUN:
        raise SystemExit(code)
    return code


if __name__ == "__main__":
    main()
