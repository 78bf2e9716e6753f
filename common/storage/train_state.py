"""A run checkpoint's training state (optimizer, RNG states, stream position, books) without pickle.

``train_state.json`` holds the structure and ``train_state.safetensors`` the tensors, so loading runs no code; the
old pickled ``train_state.pt`` is read only when the user opts in (``run.allow_pickle=true``).
"""
from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from divcfg.common.storage.checkpoint import (
    _STATE_FORMAT,
    LEGACY_TRAIN_STATE,
    TRAIN_STATE,
    TRAIN_TENSORS,
    CheckpointError,
    read_tensors,
)


def save_train_state(dirpath: str | os.PathLike, state: dict) -> None:
    """Write ``state`` into ``dirpath`` (a directory :func:`atomic_dir` yielded) as ``train_state.json`` plus
    ``train_state.safetensors``. ``state`` nests dicts, lists and tuples of tensors, numpy arrays, numbers, strings,
    booleans and None (an optimizer's ``state_dict()``, :func:`rng_state`); :func:`load_train_state` returns it equal,
    types included (int dict keys, tuples, dtypes)."""
    tensors: dict[str, torch.Tensor] = {}
    doc = _encode(state, tensors, "state")
    save_file(tensors, str(Path(dirpath) / TRAIN_TENSORS))
    (Path(dirpath) / TRAIN_STATE).write_text(json.dumps({"format": _STATE_FORMAT, "state": doc}))


def load_train_state(dirpath: str | os.PathLike, allow_pickle: bool = False) -> dict:
    """The training state saved in checkpoint ``dirpath``. A checkpoint from before :func:`save_train_state` holds a
    pickle (``train_state.pt``), which can run any code: it is read only with ``allow_pickle``
    (``run.allow_pickle``)."""
    path = Path(dirpath)
    doc_file, legacy = path / TRAIN_STATE, path / LEGACY_TRAIN_STATE
    if doc_file.is_file():
        try:
            doc = json.loads(doc_file.read_text("utf-8"))
            if not isinstance(doc, dict) or doc.get("format") != _STATE_FORMAT or "state" not in doc:
                raise ValueError(f"not a {_STATE_FORMAT} document")
        except (UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"train state {doc_file} is truncated or corrupt: {e}") from None
        tensors = read_tensors(path / TRAIN_TENSORS, "train state tensors",
                               lambda: CheckpointError(f"train state tensors {path / TRAIN_TENSORS} are missing"))
        return _decode(doc["state"], tensors, doc_file)
    if legacy.is_file():
        if not allow_pickle:
            raise CheckpointError(
                f"checkpoint {path} keeps its train state in {legacy.name}, the old pickle format: loading it runs "
                f"any code the file holds, so a file planted in a shared run directory would run inside this job. "
                f"Resume it only if you trust everyone who can write there, with run.allow_pickle=true")
        warnings.warn(f"unpickling {legacy} (run.allow_pickle=true)", stacklevel=2)
        try:
            return torch.load(legacy, map_location="cpu", weights_only=False)
        except Exception as e:  # an unpickler fails in many ways on a damaged file
            raise CheckpointError(f"train state {legacy} is truncated or corrupt: {e}") from None
    raise CheckpointError(f"checkpoint {path} holds no train state ({TRAIN_STATE} or {LEGACY_TRAIN_STATE})")


def _encode(x, tensors: dict, where: str):
    """JSON for ``x``; tensors go to ``tensors`` and are referenced by key. Tags keep what JSON would lose."""
    if isinstance(x, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = x.detach().to("cpu").contiguous().clone()  # clone: safetensors refuses shared storage
        return {"__tensor__": key}
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{where}: can't save a numpy array of dtype {x.dtype}")
        return {"__ndarray__": x.ravel().tolist(), "dtype": x.dtype.str, "shape": list(x.shape)}
    if isinstance(x, np.generic):
        return {"__npscalar__": x.item(), "dtype": x.dtype.str}
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(x)]}
    if isinstance(x, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in x):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in x.items()}
        return {"__items__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")]
                              for k, v in x.items()]}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"{where}: can't save a {type(x).__name__} in a train state")


def _decode(x, tensors: dict, source: Path):
    if isinstance(x, list):
        return [_decode(v, tensors, source) for v in x]
    if not isinstance(x, dict):
        return x
    try:
        if "__tensor__" in x:
            return tensors[x["__tensor__"]]
        if "__ndarray__" in x:
            return np.asarray(x["__ndarray__"], dtype=np.dtype(x["dtype"])).reshape(x["shape"])
        if "__npscalar__" in x:
            return np.dtype(x["dtype"]).type(x["__npscalar__"])
        if "__tuple__" in x:
            return tuple(_decode(v, tensors, source) for v in x["__tuple__"])
        if "__items__" in x:
            return {_decode(k, tensors, source): _decode(v, tensors, source) for k, v in x["__items__"]}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"train state {source} is corrupt: a tagged value fails to decode ({e!r})") from None
    return {k: _decode(v, tensors, source) for k, v in x.items()}


def rng_state() -> dict:
    """Every random generator a run draws from: torch (CPU, and CUDA once used), numpy's global one, Python's."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Set the generators :func:`rng_state` recorded (a key that is absent leaves its generator as it is)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
