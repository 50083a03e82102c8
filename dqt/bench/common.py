"""Shared pieces of the benchmarks: the default config and a robust timer."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

CONFIG = Path(__file__).resolve().parents[2] / "conf" / "config.yaml"


def default_config() -> dict:
    """conf/config.yaml without the hydra section, as a plain dict, `auto` values resolved for its task."""
    from dqt.envs import auto_values

    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG), resolve=False)
    cfg.pop("hydra", None)
    cfg.pop("defaults", None)
    cfg.update({key: value for key, value in auto_values(cfg["task"]).items() if cfg[key] == "auto"})
    return cfg


def median_times(fns: list[Callable[[], object]], repeats: int, warmup: int = 3) -> list[float]:
    """Median wall time in seconds of each fn(), the functions called in turn so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, samples in zip(fns, times):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]
