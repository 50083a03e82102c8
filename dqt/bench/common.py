"""Shared pieces of the benchmarks: the default config and a robust timer."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

CONFIG = Path(__file__).resolve().parents[2] / "conf" / "config.yaml"


def config_defaults() -> DictConfig:
    """conf/config.yaml without its hydra and defaults sections: every dqt key at its default."""
    cfg = OmegaConf.load(CONFIG)
    for key in ("hydra", "defaults"):
        cfg.pop(key, None)
    return cfg


def default_config() -> dict:
    """conf/config.yaml without the hydra section, as a plain dict, `auto` values resolved for its task."""
    from dqt.config import resolve_auto

    return resolve_auto(OmegaConf.to_container(config_defaults(), resolve=False))


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
