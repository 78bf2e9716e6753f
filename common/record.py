"""The rollout record: the one typed batch that crosses every process boundary and is written to disk.

A :class:`RolloutBatch` holds N samples (rows). Rollout actors fill the generation fields, reward workers fill the
reward fields, the learner reads both. The same record goes to the wire (msgpack) and to disk (Arrow / Parquet).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1

# name -> (dtype, trailing shape rank). Per-row arrays have shape [N, *trailing].
_ARRAYS: dict[str, tuple[np.dtype, int]] = {
    "prompt_id": (np.dtype(np.int64), 0),
    "group_id": (np.dtype(np.int64), 0),
    "sample_index": (np.dtype(np.int32), 0),
    "codes": (np.dtype(np.int16), 2),
    "logprobs": (np.dtype(np.float32), 2),
    "policy_version": (np.dtype(np.int64), 0),
    "generate_s": (np.dtype(np.float32), 0),
    "diversity_reward": (np.dtype(np.float32), 0),
    "quality": (np.dtype(np.float32), 0),
    "reward_s": (np.dtype(np.float32), 0),
}


@dataclass
class RolloutBatch:
    """N rollout samples, column-wise. Reward fields are NaN until a reward worker fills them.

    Fields (N rows, K codebooks, T frames):
      prompt_id        int64   [N]        index of the prompt in its stream
      prompt           list[str] (N)      prompt text
      group_id         int64   [N]        the group (G samples of one prompt under one policy version)
      sample_index     int32   [N]        index of the sample inside its group, 0..G-1
      codes            int16   [N, K, T]  audio codes
      logprobs         float32 [N, K, T]  log-prob of each code under the policy that sampled it
      policy_version   int64   [N]        learner version whose weights generated the sample
      generate_s       float32 [N]        wall time of the group's generation (same for the whole group)
      diversity_reward float32 [N]        r_i = mean_{j≠i} (1 − cos(e_i, e_j)) inside the group
      quality          float32 [N]        quality-scorer value (monitoring only)
      reward_s         float32 [N]        wall time of the group's scoring
    """

    prompt_id: np.ndarray
    prompt: list[str]
    group_id: np.ndarray
    sample_index: np.ndarray
    codes: np.ndarray
    logprobs: np.ndarray
    policy_version: np.ndarray
    generate_s: np.ndarray
    diversity_reward: np.ndarray = field(default=None)  # type: ignore[assignment]
    quality: np.ndarray = field(default=None)  # type: ignore[assignment]
    reward_s: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        n = len(self.prompt)
        for name in ("diversity_reward", "quality", "reward_s"):
            if getattr(self, name) is None:
                setattr(self, name, np.full(n, np.nan, dtype=np.float32))
        self.prompt = list(self.prompt)
        for name, (dtype, rank) in _ARRAYS.items():
            value = np.asarray(getattr(self, name))
            if value.dtype != dtype:
                if name == "codes" and value.size and (value.min() < np.iinfo(np.int16).min or value.max() > np.iinfo(np.int16).max):
                    raise ValueError(f"RolloutBatch.codes holds values outside int16: [{value.min()}, {value.max()}]")
                value = value.astype(dtype)
            if value.ndim != rank + 1 or value.shape[0] != n:
                raise ValueError(f"RolloutBatch.{name} must have shape [N={n}, {rank} more dims], got {value.shape}")
            setattr(self, name, value)
        if self.codes.shape != self.logprobs.shape:
            raise ValueError(f"RolloutBatch codes {self.codes.shape} and logprobs {self.logprobs.shape} differ in shape")

    # ---- basic ops ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.prompt)

    def select(self, index) -> "RolloutBatch":
        """Rows ``index`` (a slice, int array or bool mask) as a new batch."""
        idx = np.arange(len(self))[index]
        kwargs = {name: getattr(self, name)[idx] for name in _ARRAYS}
        return RolloutBatch(prompt=[self.prompt[i] for i in idx], **kwargs)

    def with_fields(self, **changes) -> "RolloutBatch":
        return replace(self, **changes)

    @staticmethod
    def concat(batches: list["RolloutBatch"]) -> "RolloutBatch":
        if not batches:
            raise ValueError("cannot concatenate an empty list of RolloutBatch")
        kwargs = {name: np.concatenate([getattr(b, name) for b in batches]) for name in _ARRAYS}
        return RolloutBatch(prompt=[p for b in batches for p in b.prompt], **kwargs)

    def groups(self) -> list["RolloutBatch"]:
        """One batch per group id, in order of first appearance."""
        _, first = np.unique(self.group_id, return_index=True)
        return [self.select(self.group_id == g) for g in self.group_id[np.sort(first)]]

    def __eq__(self, other) -> bool:
        if not isinstance(other, RolloutBatch) or self.prompt != other.prompt:
            return False
        return all(np.array_equal(getattr(self, n), getattr(other, n), equal_nan=True) for n in _ARRAYS)

    # ---- wire format: msgpack -----------------------------------------------------------------------------------
    def to_msgpack(self) -> bytes:
        """Arrays as raw little-endian bytes with dtype and shape, under a schema version."""
        arrays = {name: {"dtype": getattr(self, name).dtype.str, "shape": list(getattr(self, name).shape),
                         "data": np.ascontiguousarray(getattr(self, name)).tobytes()} for name in _ARRAYS}
        return msgpack.packb({"schema": SCHEMA_VERSION, "prompt": self.prompt, "arrays": arrays}, use_bin_type=True)

    @staticmethod
    def from_msgpack(data: bytes) -> "RolloutBatch":
        """The batch :meth:`to_msgpack` wrote. Anything else, whatever its bytes, raises :class:`RecordError`; array
        sizes are checked against the payload before any array is made, so a forged shape can't allocate."""
        try:
            obj = msgpack.unpackb(data, raw=False)
        except Exception as e:  # msgpack raises several types for corrupt input
            raise RecordError(f"corrupt RolloutBatch msgpack payload ({len(data)} bytes): {e}") from e
        if not isinstance(obj, dict) or obj.get("schema") != SCHEMA_VERSION:
            got = obj.get("schema") if isinstance(obj, dict) else type(obj).__name__
            raise RecordError(f"RolloutBatch msgpack schema {got!r} is not the supported version {SCHEMA_VERSION}")
        prompt, arrays = obj.get("prompt"), obj.get("arrays")
        if not isinstance(prompt, list) or not all(isinstance(p, str) for p in prompt) or not isinstance(arrays, dict):
            raise RecordError("RolloutBatch msgpack payload needs a 'prompt' list of strings and an 'arrays' map")
        kwargs = {name: _array_from_wire(name, arrays.get(name), dtype, rank)
                  for name, (dtype, rank) in _ARRAYS.items()}
        try:
            return RolloutBatch(prompt=prompt, **kwargs)
        except ValueError as e:  # shapes that disagree with each other or with the prompts
            raise RecordError(f"RolloutBatch msgpack payload is inconsistent: {e}") from None

    # ---- disk format: Arrow / Parquet ---------------------------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        """One row per sample; codes and log-probs as fixed-shape binary blobs (shape in the schema metadata)."""
        n = len(self)
        cols = {"prompt": pa.array(self.prompt, pa.string())}
        for name, (dtype, rank) in _ARRAYS.items():
            value = getattr(self, name)
            if rank == 0:
                cols[name] = pa.array(value)
            else:
                cols[name] = pa.array([value[i].tobytes() for i in range(n)], pa.binary())
        k, t = self.codes.shape[1:] if n else (0, 0)
        meta = {b"divcfg.schema": str(SCHEMA_VERSION).encode(), b"divcfg.codes_shape": f"{k},{t}".encode()}
        return pa.table(cols).replace_schema_metadata(meta)

    @staticmethod
    def from_arrow(table: pa.Table, source: str = "<table>") -> "RolloutBatch":
        meta = table.schema.metadata or {}
        if meta.get(b"divcfg.schema") != str(SCHEMA_VERSION).encode():
            raise ValueError(f"{source}: not a divcfg rollout table of schema {SCHEMA_VERSION} "
                             f"(found {meta.get(b'divcfg.schema')!r})")
        missing = [c for c in ["prompt", *_ARRAYS] if c not in table.column_names]
        if missing:
            raise ValueError(f"{source}: rollout table lacks column(s) {missing}")
        try:
            k, t = (int(x) for x in meta.get(b"divcfg.codes_shape", b"").decode().split(","))
            kwargs = {}
            for name, (dtype, rank) in _ARRAYS.items():
                col = table.column(name).to_pylist()
                if rank == 0:
                    kwargs[name] = np.asarray(col, dtype=dtype)
                elif any(not isinstance(b, bytes) or len(b) != k * t * dtype.itemsize for b in col):
                    raise ValueError(f"a {name} blob is not {k * t * dtype.itemsize} bytes ({dtype} [{k}, {t}])")
                else:
                    kwargs[name] = np.frombuffer(b"".join(col), dtype=dtype).reshape(len(col), k, t).copy()
            return RolloutBatch(prompt=table.column("prompt").to_pylist(), **kwargs)
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            raise RecordError(f"{source}: corrupt rollout table: {e}") from None

    def write_parquet(self, path: str | os.PathLike) -> None:
        """Written to a temporary file and renamed, so a crash never leaves half a file under ``path``."""
        tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
        pq.write_table(self.to_arrow(), tmp)
        os.replace(tmp, path)

    @staticmethod
    def read_parquet(path: str | os.PathLike) -> "RolloutBatch":
        try:
            table = pq.read_table(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"rollout file not found: {path}") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"corrupt rollout Parquet file {path}: {e}") from e
        return RolloutBatch.from_arrow(table, source=os.fspath(path))


class RecordError(ValueError):
    """A rollout record that can't be decoded; the message says which field is wrong."""


def _array_from_wire(name: str, a, dtype: np.dtype, rank: int) -> np.ndarray:
    """One array of a msgpack payload: its dtype must be the field's, its shape ``rank + 1`` non-negative ints whose
    product matches the bytes it carries."""
    if not isinstance(a, dict) or not isinstance(a.get("data"), bytes):
        raise RecordError(f"RolloutBatch msgpack field {name!r} is missing or not a dtype/shape/data map")
    if a.get("dtype") != dtype.str:
        raise RecordError(f"RolloutBatch msgpack field {name!r} has dtype {a.get('dtype')!r}, expected {dtype.str!r}")
    shape = a.get("shape")
    if not (isinstance(shape, list) and len(shape) == rank + 1
            and all(type(d) is int and 0 <= d < 2**40 for d in shape)):
        raise RecordError(f"RolloutBatch msgpack field {name!r} has shape {shape!r:.80}, expected {rank + 1} "
                          f"non-negative ints")
    if math.prod(shape) * dtype.itemsize != len(a["data"]):
        raise RecordError(f"RolloutBatch msgpack field {name!r}: shape {shape} needs "
                          f"{math.prod(shape) * dtype.itemsize} bytes, the payload has {len(a['data'])}")
    return np.frombuffer(a["data"], dtype=dtype).reshape(shape).copy()


def new_group(*, prompt_id: int, prompt: str, group_id: int, codes: np.ndarray, logprobs: np.ndarray,
              policy_version: int, generate_s: float) -> RolloutBatch:
    """A group of G samples of one prompt under one policy version: ``codes, logprobs [G, K, T]``."""
    g = codes.shape[0]
    return RolloutBatch(prompt_id=np.full(g, prompt_id), prompt=[prompt] * g, group_id=np.full(g, group_id),
                        sample_index=np.arange(g), codes=codes, logprobs=logprobs,
                        policy_version=np.full(g, policy_version), generate_s=np.full(g, generate_s))
