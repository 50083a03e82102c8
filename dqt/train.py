"""`dqt-train` / `python -m dqt.train`: compose the config (hydra), check it, start the agents.

Under torchrun every rank runs this and becomes one agent; otherwise it starts `num_agents` agent
processes itself through torch.distributed's elastic launcher (one agent runs in-process).

A bad command line is refused before anything is written: hydra's own errors (unknown key, unparsable
override) and dqt's checks (dqt/config.py, `check_run_dir`) each give one line on stderr and exit code 2.
dqt's checks run in a hydra callback, before hydra creates the run directory; torch is imported only
once the config is accepted, so a refusal takes well under a second. With resume=auto (the study presets) a
run whose final checkpoint generation is complete is skipped in one line, so a sweep started again after a
stop carries on where it was.
"""
from __future__ import annotations

import copy
import errno
import os
import re
import shutil
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from dqt import generations
from dqt.config import ConfigError, validate
from dqt.errors import EXIT_CONFIG


def check_run_dir(cfg: dict, run_dir: str) -> None:
    """resume=true needs a complete checkpoint generation of as many agents; resume=false must not overwrite
    a run's checkpoints; resume=auto continues a complete generation (of as many agents) when there is one."""
    if cfg["resume"] is False:
        if generations.holds_checkpoints(run_dir):
            raise ConfigError(f"resume=false is not allowed: {run_dir} already holds checkpoints (pass resume=true "
                              "to continue it, or another hydra.run.dir)")
        return
    found = generations.complete(run_dir)
    if not found and cfg["resume"] is True:
        raise ConfigError(f"resume=true is not allowed: {run_dir} holds no complete checkpoint generation "
                          f"({generations.CHECKPOINT_DIR}/step_*/ with {generations.MANIFEST}); pass "
                          "hydra.run.dir=<the run to continue>")
    if found and found[0].num_agents != cfg["num_agents"]:
        raise ConfigError(f"resume={str(cfg['resume']).lower()} is not allowed with num_agents={cfg['num_agents']}: "
                          f"the checkpoints in {run_dir} were written by {found[0].num_agents} agents")


def finished_at(cfg: dict, run_dir: str) -> int | None:
    """The step of the run's final checkpoint generation if the run in `run_dir` has finished, else None.

    The final generation is written after the last evaluation and is complete only once every agent's file
    is on disk, so it is a surer sign of a finished run than the last row of metrics.jsonl.
    """
    found = generations.complete(run_dir)
    return found[0].step if found and found[0].step >= cfg["train_steps"] else None


def _torchrun_world_size() -> int | None:
    """WORLD_SIZE under torchrun, else None (dqt.distributed.under_torchrun, without importing torch)."""
    return int(os.environ["WORLD_SIZE"]) if "RANK" in os.environ and "WORLD_SIZE" in os.environ else None


def _checked(task_cfg: DictConfig, run_dir: str) -> dict | None:
    """The validated config with resume=auto decided (true or false), or None when resume=auto finds the run
    finished (said in one line); on a bad value print its one line (once per node) and exit 2."""
    try:
        cfg = validate(task_cfg, _torchrun_world_size())
        # an elastic restart under torchrun runs this again, in the run directory its job has been writing
        if int(os.environ.get("RANK", 0)) == 0 and not int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)):
            check_run_dir(cfg, run_dir)
    except ConfigError as error:
        if int(os.environ.get("LOCAL_RANK", 0)) == 0:
            print(f"dqt: {error}", file=sys.stderr)
        else:
            # torchrun stops every rank as soon as one fails: the others wait for local rank 0, whose exit ends
            # them, so a busy machine cannot kill it before its one line is out
            time.sleep(30)
        sys.exit(EXIT_CONFIG)
    if cfg["resume"] == "auto":  # every rank decides from the (shared) run directory: the agents agree
        step = finished_at(cfg, run_dir)
        if step is not None:
            if int(os.environ.get("LOCAL_RANK", 0)) == 0:
                print(f"dqt: {run_dir} already finished at {step} steps, skipped", file=sys.stderr)
            return None
        cfg["resume"] = bool(generations.complete(run_dir))
    return cfg


class RefuseBadConfig(Callback):
    """Hydra callback (conf/config.yaml): check the config before hydra creates the run directory."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        if _checked(task_cfg, str(config.hydra.run.dir)) is None:
            sys.exit(0)  # resume=auto and the run has finished: leave its directory as it is, .hydra/ too


# The configs live in the repository's top-level conf/ (the package is installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(raw: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    try:  # again: multirun jobs do not pass through the callback
        cfg = _checked(raw, run_dir)
    except SystemExit:
        _remove_if_unused(Path(run_dir))
        raise
    if cfg is None:  # resume=auto, finished: a multirun goes on with its next job
        return
    from dqt import distributed, worker  # torch, only for a config that was accepted

    if _torchrun_world_size() is not None or cfg["num_agents"] == 1:
        worker.run(cfg, run_dir)
    else:
        distributed.launch(cfg["num_agents"], worker.run, (cfg, run_dir), cfg["max_restarts"])
    print(f"dqt: run directory {run_dir}", file=sys.stderr)


def _remove_if_unused(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but hydra's record of the refused command line."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def _one_line(error: Exception, argv: list[str]) -> str:
    """Hydra's (multi-line) composition errors as one line naming the override and what is allowed."""
    text = str(error).strip()
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        given = next((a for a in argv if re.match(rf"[+~]*{re.escape(key)}=", a)), key)
        return (f"{given} is not allowed: {key} is not a config key (the keys are listed in conf/config.yaml and "
                "the README's configuration table)")
    if isinstance(error, OverrideParseException):
        return (f"{error.override} is not allowed: hydra cannot parse it ({text.splitlines()[0]}); see "
                "https://hydra.cc/docs/advanced/override_grammar/basic/")
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def main() -> None:
    """Console entry point."""
    user_wants_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # hydra then raises its errors instead of printing them and exiting 1
    try:
        hydra_main()
        if _torchrun_world_size() is not None:  # this process was one agent and its work is done
            from dqt.distributed import exit_without_finalizing

            exit_without_finalizing()
    except (HydraException, OmegaConfBaseException) as error:
        if user_wants_full_error:
            raise
        print(f"dqt: {_one_line(error, sys.argv[1:])}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG or user_wants_full_error:
            raise
        # the study presets name a run's directory by its overrides: many of them make too long a name
        print(f"dqt: {error.filename} is not allowed: a name in it is longer than the filesystem allows (a study "
              "preset names each run's directory by its overrides; pass fewer, or hydra.sweep.subdir=${hydra.job.num} "
              "to number the runs)", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


if __name__ == "__main__":
    main()
