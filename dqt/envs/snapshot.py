"""Snapshots of one env's state, for exact resume: every wrapper layer's instance attributes as tensors and
plain values (what a checkpoint loaded with weights_only holds), restored into a freshly built env of the
same task so that it continues exactly as the saved one would have.

What a snapshot holds, per layer (`vars(layer)`):
- plain values, lists, tuples (named ones too), dicts, numpy scalars and dtypes;
- numpy arrays, with their aliasing: two attributes viewing one array stay views of one array, and a view of
  MuJoCo's memory (MetaWorld keeps `init_left_pad` as a live view of a body's position) stays a view of the
  same field of the restored env's MuJoCo data;
- numpy generators (`np_random`, RewardNoise's stream) and legacy RandomStates, as their states;
- gymnasium spaces, their RNG included;
- a MuJoCo model: the arrays that differ from the model compiled from the env's `fullpath` (MetaWorld moves
  bodies and sites at every reset), its options and statistics;
- MuJoCo data: the integration state (`mj_getState`: positions, velocities, actuator states, controls,
  applied forces, mocap poses, warm start, time) and the quantities computed from it that do not depend on
  the active constraints (an env may read a body's position before it steps, as gymnasium's Ant does).
Functions, classes, modules, env specs and MuJoCo renderers are code or configuration: the fresh env's are
kept. Anything else raises SnapshotError, naming the layer, attribute and type: dqt then resumes such an env
with fresh episodes (Collector.state_dict). Class attributes are not instance state and are not saved (a
space declared on the class is shared by every instance; dqt never samples one).

Restoring never runs code named by the snapshot: classes (spaces, named tuples) are looked up among the
modules already imported, and must be spaces or named tuples.
"""
from __future__ import annotations

import functools
import sys
import types
from typing import Any

import gymnasium as gym
import numpy as np
import torch

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_KEPT = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial, type, types.ModuleType,
         gym.envs.registration.EnvSpec)
_KEPT_NAMES = ("gymnasium.envs.mujoco.mujoco_rendering.MujocoRenderer",)  # by name: importing it may need GL
# MjData arrays every step recomputes before it reads them and that an env has no use for: those sized by the
# constraints active at the last step (in MuJoCo's arena), and the collision pass's BVH flags (for rendering)
_RECOMPUTED = ("efc_", "island_", "dof_island", "tendon_efcadr", "bvh_")
_MISSING = object()
_PLAIN = (bool, int, float, str, bytes)


class SnapshotError(Exception):
    """An env holds state a snapshot cannot represent, or a snapshot does not fit the env it is restored into."""


def layers(env: gym.Env) -> list[gym.Env]:
    """The env and every env it wraps, outermost first."""
    chain = [env]
    while isinstance(vars(chain[-1]).get("env"), gym.Env):
        chain.append(chain[-1].env)
    return chain


def snapshot(env: gym.Env) -> dict:
    """The state of `env` and every layer it wraps (see the module docstring); raises SnapshotError."""
    return _Encoder().env(env)


def mismatch(env: gym.Env, state: dict) -> str | None:
    """Why `snapshot`'s state does not fit `env` (other wrappers or env class), or None; changes nothing."""
    found = [_name(type(layer)) for layer in layers(env)]
    if found != state["layers"]:
        return f"the env's wrappers are {' > '.join(found)}, the checkpoint's {' > '.join(state['layers'])}"
    return None


def restore(env: gym.Env, state: dict) -> None:
    """Put `snapshot`'s state into `env`, a freshly built env of the same task and wrappers (see `mismatch`).

    Raises SnapshotError when the state does not fit; after `mismatch` has passed, that leaves `env` half
    restored (a damaged or foreign snapshot), and the env must not be used.
    """
    problem = mismatch(env, state)
    if problem:
        raise SnapshotError(problem)
    _Decoder().env(env, state)


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _resolve(name: str, kind: type) -> type:
    """The class `module:qualname` among the imported modules, if it is a subclass of `kind`."""
    module, _, qualname = name.partition(":")
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if not (isinstance(found, type) and issubclass(found, kind)):
        raise SnapshotError(f"the checkpoint names {name}, which is not an imported {kind.__name__} class")
    return found


@functools.cache
def _fields(cls: type) -> tuple[str, ...]:
    """The names of the numpy-array attributes of a MuJoCo struct type (MjModel, MjData)."""
    import mujoco

    probe = mujoco.MjModel.from_xml_string("<mujoco/>")
    instance = probe if cls is mujoco.MjModel else mujoco.MjData(probe)
    return tuple(name for name in dir(instance)
                 if not name.startswith("_") and isinstance(getattr(instance, name, None), np.ndarray))


@functools.lru_cache(maxsize=4)
def _compiled(path: str):
    """The model compiled from `path`, as no env has changed it."""
    import mujoco

    return mujoco.MjModel.from_xml_path(path)


def _raw(array: np.ndarray) -> torch.Tensor:
    """A copy of a contiguous array's bytes."""
    flat = array.reshape(-1) if array.flags.c_contiguous else array.T.reshape(-1)
    return torch.from_numpy(flat.view(np.uint8).copy())


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two contiguous arrays of one dtype hold the same bits (NaN included), compared a word at a time."""
    word = np.dtype(f"u{a.itemsize}") if a.itemsize in (1, 2, 4, 8) else np.dtype(np.uint8)
    return bool(np.array_equal(a.reshape(-1).view(word), b.reshape(-1).view(word)))


def _scalars(struct) -> dict:
    """The scalar and array fields of a MuJoCo options or statistics struct."""
    out = {}
    for name in dir(struct):
        value = getattr(struct, name)
        if not name.startswith("_") and type(value) in (int, float, np.ndarray):
            out[name] = _raw(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
    return out


def _set_scalars(struct, saved: dict) -> None:
    for name, value in saved.items():
        if isinstance(value, torch.Tensor):
            target = getattr(struct, name)
            target[...] = np.frombuffer(value.numpy().tobytes(), target.dtype).reshape(target.shape)
        else:
            setattr(struct, name, value)


class _Encoder:
    """One snapshot: objects met twice (an array in two attributes) are encoded once and then referenced."""

    def __init__(self):
        self.ids: dict[int, int] = {}
        self.buffers: dict[int, int] = {}  # numpy memory owners, whose bytes are written once
        self.alive: list = []  # keeps every encoded object alive, so that no id is reused during the snapshot
        self.mujoco: list[tuple[int, Any]] = []  # (id, MjModel or MjData), for views of their memory

    def env(self, env: gym.Env) -> dict:
        chain = layers(env)
        # MuJoCo's models, then data, before any attribute: views of their memory refer to them
        found: dict[int, tuple] = {}
        for depth, layer in enumerate(chain):
            for name, value in vars(layer).items():
                if type(value).__module__ == "mujoco._structs" and type(value).__name__ in ("MjModel", "MjData"):
                    found.setdefault(id(value), (type(value).__name__ == "MjData", depth, name, value))
        physics = []
        for _, depth, name, value in sorted(found.values(), key=lambda item: item[0]):
            index = self._new(value)
            physics.append({"layer": depth, "attr": name, "id": index, "state": self._physics(value, chain[depth])})
            self.mujoco.append((index, value))
        attrs = [self._attrs(layer, type(layer).__name__) for layer in chain]
        return {"layers": [_name(type(layer)) for layer in chain], "physics": physics, "attrs": attrs}

    def _new(self, value) -> int:
        self.ids[id(value)] = index = len(self.ids)
        self.alive.append(value)
        return index

    def _attrs(self, obj, where: str) -> dict:
        return {name: self.encode(value, f"{where}.{name}") for name, value in vars(obj).items()
                if not (name == "env" and isinstance(value, gym.Env))}

    def _physics(self, value, layer) -> dict:
        import mujoco

        if isinstance(value, mujoco.MjModel):
            path = getattr(layer, "fullpath", None)
            if not isinstance(path, str):
                raise SnapshotError(f"{type(layer).__name__} has a MuJoCo model but no `fullpath` to compile it from")
            compiled, changed = _compiled(path), {}
            for name in _fields(mujoco.MjModel):
                mine, theirs = getattr(value, name), getattr(compiled, name)
                if mine.shape != theirs.shape:
                    raise SnapshotError(f"{type(layer).__name__}'s MuJoCo model is not the one in {path}")
                if not _same_bits(mine, theirs):
                    changed[name] = _raw(mine)
            return {"changed": changed, "opt": _scalars(value.opt), "stat": _scalars(value.stat)}
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(value.model, spec))
        mujoco.mj_getState(value.model, value, state, spec)
        return {"integration": torch.from_numpy(state), "fields": {
            name: _raw(getattr(value, name)) for name in _fields(mujoco.MjData) if not name.startswith(_RECOMPUTED)}}

    def encode(self, value, where: str):
        if value is None or type(value) in _PLAIN:  # exact types: numpy's float64 is a float too
            return value
        if isinstance(value, np.generic):
            array = np.asarray(value)
            self._check_dtype(array.dtype, where)
            return {"kind": "npscalar", "dtype": array.dtype.str, "raw": array.tobytes()}
        if isinstance(value, np.dtype):
            self._check_dtype(value, where)
            return {"kind": "dtype", "dtype": value.str}
        if isinstance(value, _KEPT) or f"{type(value).__module__}.{type(value).__qualname__}" in _KEPT_NAMES:
            return {"kind": "kept"}
        if id(value) in self.ids:
            return {"kind": "ref", "id": self.ids[id(value)]}
        if isinstance(value, np.ndarray):
            return self._array(value, where)
        if isinstance(value, np.random.Generator):
            return {"kind": "generator", "id": self._new(value), "bits": type(value.bit_generator).__name__,
                    "state": self.encode(value.bit_generator.state, where)}
        if isinstance(value, np.random.RandomState):
            return {"kind": "randomstate", "id": self._new(value),
                    "state": self.encode(value.get_state(legacy=False), where)}
        if isinstance(value, gym.spaces.Space):
            index = self._new(value)
            return {"kind": "space", "id": index, "class": _name(type(value)), "attrs": self._attrs(value, where)}
        if type(value) in (list, tuple):
            index = self._new(value)
            return {"kind": type(value).__name__, "id": index,
                    "items": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, tuple) and hasattr(type(value), "_fields"):  # a named tuple
            index = self._new(value)
            return {"kind": "namedtuple", "id": index, "class": _name(type(value)),
                    "items": [self.encode(v, f"{where}.{f}") for f, v in zip(value._fields, value)]}
        if type(value) is dict:
            index = self._new(value)
            if not all(k is None or type(k) in _PLAIN for k in value):
                raise SnapshotError(f"{where} is a dict with keys other than plain values")
            return {"kind": "dict", "id": index, "keys": list(value),
                    "values": [self.encode(v, f"{where}[{k!r}]") for k, v in value.items()]}
        raise SnapshotError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which an env snapshot "
                            "cannot hold")

    @staticmethod
    def _check_dtype(dtype: np.dtype, where: str) -> None:
        if dtype.kind not in "biufc" or dtype.fields is not None:
            raise SnapshotError(f"{where} has numpy dtype {dtype}, which an env snapshot cannot hold")

    def _array(self, array: np.ndarray, where: str) -> dict:
        self._check_dtype(array.dtype, where)
        index = self._new(array)
        owner = array
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        if array.size == 0:  # no memory to share: a copy of its own
            owner = array = array.copy()
        if owner.base is None:  # numpy's memory: the owner's bytes, once
            if not (owner.flags.c_contiguous or owner.flags.f_contiguous):
                raise SnapshotError(f"{where} views an array that is not contiguous")
            if id(owner) in self.buffers:
                base = {"kind": "buffer", "id": self.buffers[id(owner)]}
            else:
                self.buffers[id(owner)] = len(self.buffers)
                self.alive.append(owner)
                base = {"kind": "buffer", "id": self.buffers[id(owner)], "raw": _raw(owner)}
            start = _address(owner)
        else:  # memory of another library: a field of the env's MuJoCo model or data
            base, start = self._mujoco_field(array, where)
        return {"kind": "array", "id": index, "base": base, "offset": _address(array) - start,
                "shape": list(array.shape), "strides": list(array.strides), "dtype": array.dtype.str,
                "writeable": bool(array.flags.writeable)}

    def _mujoco_field(self, array: np.ndarray, where: str) -> tuple[dict, int]:
        address = _address(array)
        for index, struct in self.mujoco:
            for name in _fields(type(struct)):
                field = getattr(struct, name)
                start = _address(field)
                if start <= address < start + field.nbytes:
                    return {"kind": "mujoco_field", "owner": index, "field": name}, start
        raise SnapshotError(f"{where} is a view of memory that is neither numpy's nor the env's MuJoCo model or data")


class _Decoder:
    """Rebuilds what _Encoder wrote, reusing the fresh env's objects where identity may matter to others
    (generators, spaces, MuJoCo structs) and new objects elsewhere, with the saved aliasing."""

    def __init__(self):
        self.objects: dict[int, Any] = {}
        self.buffers: dict[int, np.ndarray] = {}

    def env(self, env: gym.Env, state: dict) -> None:
        chain = layers(env)
        for entry in state["physics"]:
            layer = chain[entry["layer"]]
            struct = vars(layer).get(entry["attr"])
            self._physics(struct, entry["state"], layer)
            self.objects[entry["id"]] = struct
        for layer, attrs in zip(chain, state["attrs"]):
            self._attrs(layer, attrs)

    def _attrs(self, obj, attrs: dict) -> None:
        current = vars(obj)
        for name in [n for n in current if n not in attrs and not (n == "env" and isinstance(current[n], gym.Env))]:
            del current[name]  # made since the env was built (a cached property): absent from the saved env
        for name, encoded in attrs.items():
            current[name] = self.decode(encoded, current.get(name, _MISSING))

    @staticmethod
    def _physics(struct, saved: dict, layer) -> None:
        import mujoco

        if "changed" in saved:
            if not isinstance(struct, mujoco.MjModel) or not isinstance(getattr(layer, "fullpath", None), str):
                raise SnapshotError(f"{type(layer).__name__} has no MuJoCo model where the checkpoint's env had one")
            compiled = _compiled(layer.fullpath)
            for name in _fields(mujoco.MjModel):
                target = getattr(struct, name)
                source = (np.frombuffer(saved["changed"][name].numpy().tobytes(), target.dtype).reshape(target.shape)
                          if name in saved["changed"] else getattr(compiled, name))
                if not _same_bits(target, source):
                    target[...] = source
            _set_scalars(struct.opt, saved["opt"])
            _set_scalars(struct.stat, saved["stat"])
            return
        if not isinstance(struct, mujoco.MjData):
            raise SnapshotError(f"{type(layer).__name__} has no MuJoCo data where the checkpoint's env had it")
        for name, raw in saved["fields"].items():
            target = getattr(struct, name, None)
            if isinstance(target, np.ndarray) and target.nbytes == raw.numel():
                target[...] = np.frombuffer(raw.numpy().tobytes(), target.dtype).reshape(target.shape)
        state = saved["integration"].numpy()
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        if state.size != mujoco.mj_stateSize(struct.model, spec):
            raise SnapshotError("the checkpoint's MuJoCo state does not fit this env's model")
        mujoco.mj_setState(struct.model, struct, state, spec)

    def decode(self, encoded, fresh=_MISSING):
        if not isinstance(encoded, dict):
            return encoded
        kind = encoded["kind"]
        if kind == "ref":
            return self.objects[encoded["id"]]
        if kind == "kept":
            if fresh is _MISSING:
                raise SnapshotError("the env lacks an attribute the checkpoint's env had")
            return fresh
        if kind == "npscalar":
            return np.frombuffer(encoded["raw"], np.dtype(encoded["dtype"]))[0]
        if kind == "dtype":
            return np.dtype(encoded["dtype"])
        if kind == "array":
            return self._array(encoded)
        if kind == "generator":
            if encoded["bits"] not in _BIT_GENERATORS:
                raise SnapshotError(f"unknown bit generator {encoded['bits']!r} in the checkpoint")
            same = isinstance(fresh, np.random.Generator) and type(fresh.bit_generator).__name__ == encoded["bits"]
            generator = fresh if same else np.random.Generator(getattr(np.random, encoded["bits"])())
            self.objects[encoded["id"]] = generator
            generator.bit_generator.state = self.decode(encoded["state"])
            return generator
        if kind == "randomstate":
            legacy = fresh if isinstance(fresh, np.random.RandomState) else np.random.RandomState()
            self.objects[encoded["id"]] = legacy
            legacy.set_state(self.decode(encoded["state"]))
            return legacy
        if kind == "space":
            cls = _resolve(encoded["class"], gym.spaces.Space)
            space = fresh if type(fresh) is cls else cls.__new__(cls)
            self.objects[encoded["id"]] = space
            self._attrs(space, encoded["attrs"])
            return space
        if kind in ("list", "tuple", "namedtuple"):
            items: list = []
            if kind == "list":
                self.objects[encoded["id"]] = items  # before the items: a list may hold itself
            fresh_items = fresh if isinstance(fresh, (list, tuple)) else ()
            for i, item in enumerate(encoded["items"]):
                items.append(self.decode(item, fresh_items[i] if i < len(fresh_items) else _MISSING))
            if kind == "tuple":
                items = tuple(items)
            elif kind == "namedtuple":
                cls = _resolve(encoded["class"], tuple)
                if not hasattr(cls, "_fields"):
                    raise SnapshotError(f"the checkpoint names {encoded['class']}, which is not a named tuple")
                items = cls._make(items)
            self.objects[encoded["id"]] = items
            return items
        if kind == "dict":
            out: dict = {}
            self.objects[encoded["id"]] = out
            fresh_dict = fresh if isinstance(fresh, dict) else {}
            for key, value in zip(encoded["keys"], encoded["values"]):
                out[key] = self.decode(value, fresh_dict.get(key, _MISSING))
            return out
        raise SnapshotError(f"unknown kind {kind!r} in the checkpoint's env state")

    def _array(self, encoded: dict) -> np.ndarray:
        base = encoded["base"]
        if base["kind"] == "buffer":
            if "raw" in base:
                self.buffers[base["id"]] = base["raw"].numpy().copy()
            memory = self.buffers[base["id"]]
        else:
            memory = getattr(self.objects[base["owner"]], base["field"])
        array = np.ndarray(tuple(encoded["shape"]), np.dtype(encoded["dtype"]), buffer=memory, offset=encoded["offset"],
                           strides=tuple(encoded["strides"]))
        array.flags.writeable = encoded["writeable"]
        self.objects[encoded["id"]] = array
        return array
