"""Validate the composed config once, before any worker starts.

Every user-settable value is checked here; a bad one raises `ConfigError` whose message is the one line
the user sees: the key, the bad value and what is allowed.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dqt.envs import auto_values, check_task
from dqt.errors import ConfigError  # re-exported: callers catch dqt.config.ConfigError

AGGREGATIONS = ("mean", "median", "trimmed_mean")
FAULT_KINDS = ("scale", "noise", "sign_flip", "nan")
EXPLORE_KINDS = ("gaussian", "eps")
CRITIC_BACKUPS = ("min", "mean")  # dqt.model.CRITIC_BACKUPS, not imported: checking a config must not load torch
LR_SCHEDULES = ("constant", "linear", "log", "log_linear", "n_linear", "plateau")
LR_SCALES = ("none", "inv_n", "log_n", "sqrt_n")
NOISE_REDUCES = ("median", "mean")
WANDB_MODES = ("offline", "online", "disabled")
DEVICES = ("auto", "cpu", "cuda")
BAD_DATA = ("error", "drop")
LIST_KEYS = ("faults.agents", "noise.agents", "wandb.tags")  # the only keys whose value may be a list


def token_bins(bins: int, levels: int) -> int:
    """The bins of each token when `bins` per action dimension are chosen in `levels` tokens (`model.levels`):
    the integer `levels`-th root of `bins`; ValueError if there is none >= 2."""
    root = round(bins ** (1.0 / levels))
    for candidate in (root - 1, root, root + 1):
        if candidate >= 2 and candidate ** levels == bins:
            return candidate
    raise ValueError(f"bins={bins} is not allowed with model.levels={levels}: expected an integer >= 2 to the "
                     f"power {levels} (e.g. bins={2 ** levels}), each token choosing among that integer's bins")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _int(lo: int | None = None, hi: int | None = None, nullable: bool = False):
    allowed = "an integer" + (f" >= {lo}" if lo is not None else "") + (f" <= {hi}" if hi is not None else "")
    if nullable:
        allowed += " or null"

    def ok(v: Any) -> bool:
        if v is None:
            return nullable
        return _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)

    return ok, allowed


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    left = "" if lo is None else (f" > {lo}" if lo_open else f" >= {lo}")
    right = "" if hi is None else (f" < {hi}" if hi_open else f" <= {hi}")
    allowed = "a number" + left + ("," if left and right else "") + right

    def ok(v: Any) -> bool:
        if not _is_number(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        if hi is not None and (v >= hi if hi_open else v > hi):
            return False
        return True

    return ok, allowed


def _choice(*options: str):
    return (lambda v: v in options), "one of " + ", ".join(options)


def _bool():
    return (lambda v: isinstance(v, bool)), "true or false"


def _str_or_null():
    return (lambda v: v is None or isinstance(v, str)), "a string or null"


def _int_or_auto(lo: int):
    ok, allowed = _int(lo)
    return (lambda v: v == "auto" or ok(v)), f"auto or {allowed}"


def _float_or_auto(*args, **kwargs):
    ok, allowed = _float(*args, **kwargs)
    return (lambda v: v == "auto" or ok(v)), f"auto or {allowed}"


def _reward_scale():
    return (lambda v: v in ("auto", "map", "max") or (_is_number(v) and v > 0)), "auto, map, max or a number > 0"


def _bool_or_auto():
    return (lambda v: v == "auto" or isinstance(v, bool)), "auto, true or false"


def _choice_or_auto(*options: str):
    return (lambda v: v == "auto" or v in options), "one of auto, " + ", ".join(options)


def _str_list():
    def ok(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and all(isinstance(s, str) and s != "" for s in v)

    return ok, "a list of non-empty strings"


def _rank_list():
    def ok(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and all(_is_int(r) and r >= 0 for r in v) and len(set(v)) == len(v)

    return ok, "a list of distinct ranks (integers >= 0)"


def _all_or_rank_list():
    ranks, allowed = _rank_list()
    return (lambda v: v == "all" or ranks(v)), "all or " + allowed


# key -> (check, what is allowed). Order is the order of the README table.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "task": ((lambda v: isinstance(v, str) and v != ""), "mw-<metaworld task> or gym:<env id>"),
    "action_repeat": _int_or_auto(1),
    "episode_length": _int_or_auto(1),
    "num_envs": _int_or_auto(1),
    "reward_scale": _reward_scale(),
    "num_agents": _int(1, nullable=True),
    "seed": _int(0),
    "noise.mean": _float(),
    "noise.std": _float(0),
    "noise.agents": _all_or_rank_list(),
    "noise.reads": _int(1),
    "noise.reduce": _choice(*NOISE_REDUCES),
    "train_steps": _int(1),
    "seed_steps": _int(0),
    "demos": _int(0),
    "demo_noise": _float(0),
    "demo_share": _float(0, 1),
    "replay_size": _int(1),
    "batch_size": _int(1),
    "pretrain_updates": _int(0),
    "updates_per_step": _float_or_auto(0, lo_open=True),
    "bins": _int(2, 65536),
    "n_step": _int(1),
    "n_step_cut": _bool(),
    "n_step_bound": _bool_or_auto(),
    "discount": _float_or_auto(0, 1, lo_open=True),
    "tau": _float(0, 1, lo_open=True),
    "within_step": _choice("target", "online"),
    "double_q": _bool(),
    "mc_lower_bound": _bool_or_auto(),
    "target_clip": _bool_or_auto(),
    "conservative_weight": _float(0),
    "conservative_rows": _choice("demos", "all"),
    "excess_weight": _float_or_auto(0),
    "model.dim": _int(1),
    "model.depth": _int(1),
    "model.heads": _int(1),
    "model.dueling": _bool(),
    "model.critics": _int_or_auto(1),
    "model.critic_backup": _choice(*CRITIC_BACKUPS),
    "model.levels": _int(1, 16),
    "lr": _float_or_auto(0, lo_open=True),
    "weight_decay": _float(0),
    "grad_clip": _float(0),
    "lr_schedule": _choice_or_auto(*LR_SCHEDULES),
    "lr_final": _float(0, 1),
    "lr_scale": _choice(*LR_SCALES),
    "lr_plateau.factor": _float(0, 1, lo_open=True, hi_open=True),
    "lr_plateau.patience": _int(0),
    "explore.kind": _choice_or_auto(*EXPLORE_KINDS),
    "explore.std": _float(0),
    "explore.eps": _float(0, 1),
    "explore.spread": _float(0),
    "explore.optimism": _float(0),
    "explore.color": _float(0, 4),
    "aggregation": _choice(*AGGREGATIONS),
    "aggregation_trim": _float(0, 0.5, hi_open=True),
    "faults.agents": _rank_list(),
    "faults.kind": _choice(*FAULT_KINDS),
    "faults.magnitude": _float(),
    "eval_ema": _float(0, 1, hi_open=True),
    "eval_every": _int(1),
    "eval_episodes": _int_or_auto(1),
    "log_every": _int(1),
    "checkpoint_every": _int(1),
    "resume": ((lambda v: isinstance(v, bool) or v == "auto"), "true, false or auto"),
    "progress": _bool(),
    "device": _choice(*DEVICES),
    "threads": _int(1, nullable=True),
    "max_restarts": _int(0),
    "bad_data": _choice(*BAD_DATA),
    "wandb.mode": _choice(*WANDB_MODES),
    "wandb.project": ((lambda v: isinstance(v, str) and v != ""), "a non-empty string"),
    "wandb.group": _str_or_null(),
    "wandb.name": _str_or_null(),
    "wandb.tags": _str_list(),
}


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v)
    if v is None:
        return "null"
    return str(v).replace("True", "true").replace("False", "false")


def _lookup(plain: dict, key: str) -> Any:
    for part in key.split("."):
        plain = plain[part]
    return plain


def _unknown_keys(node: dict, prefix: str = "") -> list[str]:
    """Keys of `node` that no rule checks (e.g. added with +key=value)."""
    unknown = []
    for name, value in node.items():
        key = f"{prefix}{name}"
        if key in RULES:
            continue
        if isinstance(value, dict) and any(rule.startswith(f"{key}.") for rule in RULES):
            unknown += _unknown_keys(value, f"{key}.")
        else:
            unknown.append(key)
    return unknown


def resolve_auto(plain: dict) -> dict:
    """Replace the `auto` values of `plain` (in place, and returned) by what they mean for its task and data."""
    # the task's (a gym: env is built once to read its time limit)
    for key, value in auto_values(plain["task"]).items():
        *path, name = key.split(".")  # nested keys, e.g. explore.kind
        node = _lookup(plain, ".".join(path)) if path else plain
        if node[name] == "auto":
            node[name] = value
    if plain["updates_per_step"] == "auto":
        # from scratch every transition is scarce: twice the updates reached 0.8 on door-unlock on 3 of 3 seeds
        # where 0.5 did on 1 (README, Learning benchmark); with demos 0.5 already saturates, at half the time
        plain["updates_per_step"] = 0.5 if plain["demos"] else 1.0
    return plain


def validate(cfg: DictConfig, world_size: int | None = None) -> dict:
    """Check every key of `cfg`; return it as a plain dict with `num_agents` and the `auto` values resolved.

    `world_size` is torchrun's WORLD_SIZE when running under torchrun, else None.
    """
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:  # e.g. lr=${oops}: an interpolation that does not resolve
        key, why = getattr(error, "full_key", None), str(error).splitlines()[0]
        if not key:
            raise ConfigError(f"the config does not resolve: {why}") from None
        raw = _lookup(OmegaConf.to_container(cfg, resolve=False), key)
        raise ConfigError(f"{key}={raw} is not allowed: {why}") from None
    assert isinstance(plain, dict)
    for key in _unknown_keys(plain):
        raise ConfigError(f"{key}={_show(_lookup(plain, key))} is not allowed: {key} is not a config key (the keys "
                          "are listed in conf/config.yaml and the README's configuration table)")
    kind = plain.get("faults", {}).get("kind")
    if isinstance(kind, float) and math.isnan(kind):  # YAML reads `faults.kind=nan` as the float NaN
        plain["faults"]["kind"] = "nan"
    for key, (ok, allowed) in RULES.items():
        value: Any = plain
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ConfigError(f"config key {key} is missing (expected {allowed})")
            value = value[part]
        if isinstance(value, (list, tuple)) and key not in LIST_KEYS:
            raise ConfigError(f"{key}={_show(value)} is not allowed: expected {allowed}")
        if not ok(value):
            raise ConfigError(f"{key}={_show(value)} is not allowed: expected {allowed}")

    if world_size is not None:
        if plain["num_agents"] not in (None, world_size):
            raise ConfigError(
                f"num_agents={plain['num_agents']} is not allowed under torchrun with {world_size} processes: "
                f"leave it unset or set it to {world_size}"
            )
        plain["num_agents"] = world_size
    elif plain["num_agents"] is None:
        plain["num_agents"] = 2

    n, faulty = plain["num_agents"], plain["faults"]["agents"]
    for key in ("faults", "noise"):
        ranks = plain[key]["agents"]
        bad = [r for r in ranks if r >= n] if ranks != "all" else []
        if bad:
            raise ConfigError(f"{key}.agents={bad} is not allowed: expected ranks below num_agents={n}")
    if faulty and len(faulty) >= n:
        raise ConfigError(f"faults.agents={faulty} is not allowed with num_agents={n}: expected fewer faulty agents "
                          "than agents (no honest agent would be left)")
    if plain["lr_scale"] == "log_n" and n < 2:
        raise ConfigError(f"lr_scale='log_n' is not allowed with num_agents={n}: lr * ln N would be 0; "
                          "log_n needs num_agents >= 2 (use none for one agent)")
    reward_scale = plain["reward_scale"]
    resolve_auto(plain)  # before the checks that read the resolved values
    if plain["reward_scale"] == "map" and plain["discount"] == 1:
        raise ConfigError(f"discount=1 is not allowed with reward_scale={reward_scale} (the value map, for "
                          f"{plain['task']}): the value map divides by 1 - discount; set reward_scale to max, a "
                          "number or discount < 1")
    if plain["batch_size"] > plain["replay_size"]:
        raise ConfigError(f"batch_size={plain['batch_size']} is not allowed with replay_size={plain['replay_size']}: "
                          "expected batch_size <= replay_size")
    if plain["replay_size"] < plain["episode_length"] + 1:
        raise ConfigError(f"replay_size={plain['replay_size']} is not allowed with episode_length="
                          f"{plain['episode_length']}: an episode takes episode_length + 1 rows of replay; expected "
                          f"replay_size >= {plain['episode_length'] + 1}")
    if plain["seed_steps"] > plain["train_steps"]:
        raise ConfigError(
            f"seed_steps={plain['seed_steps']} is not allowed: expected at most train_steps={plain['train_steps']}"
        )
    if plain["explore"]["optimism"] and plain["model"]["critics"] < 2:
        raise ConfigError(f"explore.optimism={plain['explore']['optimism']} is not allowed with model.critics="
                          f"{plain['model']['critics']}: the bonus is the critics' spread, which needs "
                          "model.critics >= 2")
    if plain["explore"]["color"] and plain["explore"]["kind"] != "gaussian":
        raise ConfigError(f"explore.color={plain['explore']['color']} is not allowed with explore.kind="
                          f"{plain['explore']['kind']}: the color is the Gaussian noise's; set explore.kind=gaussian")
    try:
        token_bins(plain["bins"], plain["model"]["levels"])
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if plain["model"]["dim"] % plain["model"]["heads"]:
        raise ConfigError(
            f"model.heads={plain['model']['heads']} is not allowed: expected a divisor of model.dim={plain['model']['dim']}"
        )

    check_task(plain["task"], plain["demos"], plain["action_repeat"], plain["episode_length"])
    return plain
