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

from dqt import distributed, generations, worker
from dqt.config import ConfigError, validate


def check_run_dir(cfg: dict, run_dir: str) -> None:
    """resume=true needs a complete checkpoint generation of as many agents; resume=false must not overwrite
    a run's checkpoints."""
    if cfg["resume"]:
        found = generations.complete(run_dir)
        if not found:
            raise ConfigError(f"resume=true is not allowed: {run_dir} holds no complete checkpoint generation "
                              f"({generations.CHECKPOINT_DIR}/step_*/ with {generations.MANIFEST}); pass "
                              "hydra.run.dir=<the run to continue>")
        if found[0].num_agents != cfg["num_agents"]:
            raise ConfigError(f"resume=true is not allowed with num_agents={cfg['num_agents']}: the checkpoints in "
                              f"{run_dir} were written by {found[0].num_agents} agents")
    elif generations.holds_checkpoints(run_dir):
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
