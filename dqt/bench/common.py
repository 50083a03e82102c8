"""Shared pieces of the benchmarks: the default config and a robust timer."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

CONFIG = Path(__file__).resolve().parents[2] / "conf" / "config.yaml"


def default_config() -> dict:
    """conf/config.yaml without the hydra section, as a plain dict."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG), resolve=False)
    cfg.pop("hydra", None)
    cfg.pop("defaults", None)
    return cfg


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
