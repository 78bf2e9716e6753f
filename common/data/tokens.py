"""Token datasets: prompts and their audio codes as Parquet (one row per clip), plus any attribute columns."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class TokenDataset:
    """``prompts`` (N), ``codes int16 [N, K, T]``, extra ``columns`` by name, and ``meta`` (codec, sample rate...)."""

    prompts: list[str]
    codes: np.ndarray
    columns: dict[str, list]
    meta: dict

    def __len__(self) -> int:
        return len(self.prompts)


def write_tokens(path: str | os.PathLike, prompts: list[str], codes: np.ndarray, meta: dict,
                 columns: dict[str, list] | None = None) -> None:
    """Atomic write (temporary file, then rename)."""
    codes = np.asarray(codes)
    if codes.ndim != 3 or len(codes) != len(prompts):
        raise ValueError(f"codes must be [N={len(prompts)}, K, T], got {codes.shape}")
    codes = codes.astype(np.int16)
    cols = {"prompt": pa.array(prompts, pa.string()),
            "codes": pa.array([c.tobytes() for c in codes], pa.binary())}
    for name, values in (columns or {}).items():
        cols[name] = pa.array(values)
    k, t = codes.shape[1:]
    table = pa.table(cols).replace_schema_metadata(
        {b"divcfg.tokens": json.dumps({**meta, "codes_shape": [k, t]}).encode()})
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_tokens(path: str | os.PathLike) -> TokenDataset:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"token dataset not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise ValueError(f"token dataset {path} is not a readable Parquet file: {e}") from e
    raw = (table.schema.metadata or {}).get(b"divcfg.tokens")
    if raw is None or "codes" not in table.column_names or "prompt" not in table.column_names:
        raise ValueError(f"{path} is not a divcfg token dataset (needs 'prompt' and 'codes' columns and metadata); "
                         f"make one with `divcfg world build` or `divcfg tokenize`")
    meta, (k, t) = _read_meta(path, raw)
    blobs = table.column("codes").to_pylist()
    # Every row's blob is checked before the join, so a damaged file can't make a wrong-sized (or huge) array.
    for i, b in enumerate(blobs):
        if not isinstance(b, bytes) or len(b) != 2 * k * t:
            got = f"{len(b)} bytes" if isinstance(b, bytes) else type(b).__name__
            raise ValueError(f"token dataset {path} is corrupt: row {i}'s codes hold {got}, expected {2 * k * t} "
                             f"(int16 [{k}, {t}])")
    prompts = table.column("prompt").to_pylist()
    bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str)), None)
    if bad is not None:
        raise ValueError(f"token dataset {path} is corrupt: row {bad}'s prompt is {prompts[bad]!r}")
    codes = np.frombuffer(b"".join(blobs), dtype=np.int16).reshape(len(blobs), k, t).copy()
    columns = {n: table.column(n).to_pylist() for n in table.column_names if n not in ("prompt", "codes")}
    return TokenDataset(prompts, codes, columns, meta)


def _read_meta(path: str, raw: bytes) -> tuple[dict, tuple[int, int]]:
    """The dataset's metadata and its ``codes_shape`` ``(K, T)``; a clear error when either is damaged."""
    try:
        meta = json.loads(raw)
        k, t = meta.pop("codes_shape")
        if not (type(k) is int and type(t) is int and k > 0 and t > 0):
            raise ValueError(f"codes_shape {[k, t]} is not two positive integers")
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"token dataset {path} has corrupt divcfg.tokens metadata: {e!r}") from None
    return meta, (k, t)
