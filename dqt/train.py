"""`dqt-train` / `python -m dqt.train`: compose the config (hydra), check it, start the agents.

Under torchrun every rank runs this and becomes one agent; otherwise it starts `num_agents` agent
processes itself through torch.distributed's elastic launcher (one agent runs in-process).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dqt import checkpoint, distributed, worker
from dqt.config import ConfigError, validate


def check_run_dir(cfg: dict, run_dir: str) -> None:
    """resume=true needs every agent's checkpoint; resume=false must not overwrite one."""
    paths = [checkpoint.path_for(run_dir, rank) for rank in range(cfg["num_agents"])]
    present = [p.exists() for p in paths]
    if cfg["resume"] and not all(present):
        missing = ", ".join(str(p) for p, ok in zip(paths, present) if not ok)
        raise ConfigError(f"resume=true is not allowed: no checkpoint {missing} (pass hydra.run.dir=<the run to continue>"
                          f" with the same num_agents)")
    if not cfg["resume"] and any(present):
        raise ConfigError(f"resume=false is not allowed: {run_dir} already holds checkpoints (pass resume=true to "
                          "continue it, or another hydra.run.dir)")


# The configs live in the repository's top-level conf/ (the package is installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(raw: DictConfig) -> None:
    world_size = int(os.environ["WORLD_SIZE"]) if distributed.under_torchrun() else None
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        cfg = validate(raw, world_size)
        if world_size is None or int(os.environ.get("RANK", 0)) == 0:
            check_run_dir(cfg, run_dir)
    except ConfigError as error:
        print(f"dqt: {error}", file=sys.stderr)
        sys.exit(2)
    if world_size is not None or cfg["num_agents"] == 1:
        worker.run(cfg, run_dir)
    else:
        distributed.launch(cfg["num_agents"], worker.run, (cfg, run_dir), cfg["max_restarts"])
    print(f"dqt: run directory {run_dir}", file=sys.stderr)


def main() -> None:
    """Console entry point."""
    hydra_main()


if __name__ == "__main__":
    main()
