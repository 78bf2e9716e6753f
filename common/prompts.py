"""Prompt files: Parquet (a ``prompt`` column), JSONL (a ``prompt`` key per line), or plain text, one per line."""
from __future__ import annotations

import json
import os


class PromptFileError(ValueError):
    """A prompt file that can't be used; the message names the file and the line."""


def load_prompts(path: str | os.PathLike, max_bytes: int | None = None, truncate: bool = False) -> list[str]:
    """Read prompts from ``path``. Blank lines are skipped.

    ``max_bytes`` is the text encoder's limit in UTF-8 bytes: a longer prompt is an error unless ``truncate``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PromptFileError(f"prompt file not found: {path}")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as e:
            raise PromptFileError(f"prompt file {path} is not a readable Parquet file: {e}") from e
        if "prompt" not in table.column_names:
            raise PromptFileError(f"prompt file {path} has no 'prompt' column (columns: {table.column_names})")
        items = [(i + 1, p) for i, p in enumerate(table.column("prompt").to_pylist())]
    else:
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise PromptFileError(f"prompt file {path} is not UTF-8 (line {line}, byte {e.start})") from None
        lines = [(i + 1, line) for i, line in enumerate(text.splitlines())]
        if path.endswith(".jsonl"):
            items = []
            for n, line in lines:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    items.append((n, obj["prompt"] if isinstance(obj, dict) else obj))
                except (json.JSONDecodeError, KeyError) as e:
                    raise PromptFileError(f"{path}:{n}: expected a JSON object with a 'prompt' key ({e})") from None
        else:
            items = lines
    prompts = []
    for n, p in items:
        if not isinstance(p, str):
            raise PromptFileError(f"{path}:{n}: prompt is {type(p).__name__}, not text")
        p = p.strip()
        if not p:
            continue
        if max_bytes is not None and len(p.encode("utf-8")) > max_bytes:
            if not truncate:
                raise PromptFileError(
                    f"{path}:{n}: prompt is {len(p.encode('utf-8'))} UTF-8 bytes, over the text encoder's limit of "
                    f"{max_bytes}; shorten it or enable truncation")
            p = p.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
        prompts.append(p)
    if not prompts:
        raise PromptFileError(f"prompt file {path} holds no prompts")
    return prompts
