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
    meta = json.loads(raw)
    k, t = meta.pop("codes_shape")
    blobs = table.column("codes").to_pylist()
    codes = np.frombuffer(b"".join(blobs), dtype=np.int16).reshape(len(blobs), k, t).copy()
    columns = {n: table.column(n).to_pylist() for n in table.column_names if n not in ("prompt", "codes")}
    return TokenDataset(table.column("prompt").to_pylist(), codes, columns, meta)
