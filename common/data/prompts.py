"""Prompt files: Parquet (a ``prompt`` column), JSONL (a ``prompt`` key per line), or plain text, one per line."""
from __future__ import annotations

import json
import os

import pyarrow.parquet as pq

# A prompt file is read whole; this bounds the memory a wrong path (a dataset, a disk image) can take.
MAX_FILE_BYTES = 256 * 2**20


class PromptFileError(ValueError):
    """A prompt file that can't be used; the message names the file and the line."""


def load_prompts(path: str | os.PathLike, max_bytes: int | None = None, truncate: bool = False) -> list[str]:
    """Read prompts from ``path``. Blank lines of a text file are skipped; an empty prompt in a JSONL or Parquet
    record is an error, since a record was meant.

    ``max_bytes`` is the text encoder's limit in UTF-8 bytes: a longer prompt is an error unless ``truncate``.
    Every problem raises :class:`PromptFileError` naming the file (and the line or row).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PromptFileError(f"prompt file not found: {path}")
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise PromptFileError(f"prompt file {path} is {size} bytes, over the {MAX_FILE_BYTES}-byte limit for a "
                              f"prompt file; is it the right file?")
    items = _parquet_items(path) if path.endswith(".parquet") else _text_items(path)
    prompts = []
    for n, p in items:
        if not isinstance(p, str):
            raise PromptFileError(f"{path}:{n}: prompt is {type(p).__name__}, not text")
        p = p.strip()
        if not p:
            if path.endswith((".parquet", ".jsonl")):
                raise PromptFileError(f"{path}:{n}: prompt is empty")
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


def _parquet_items(path: str) -> list[tuple[int, object]]:
    try:
        table = pq.read_table(path)
        if "prompt" not in table.column_names:
            raise PromptFileError(f"prompt file {path} has no 'prompt' column (columns: {table.column_names})")
        return [(i + 1, p) for i, p in enumerate(table.column("prompt").to_pylist())]
    except PromptFileError:
        raise
    except Exception as e:  # pyarrow raises many types for a damaged file
        raise PromptFileError(f"prompt file {path} is not a readable Parquet file: {e}") from e


def _text_items(path: str) -> list[tuple[int, object]]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PromptFileError(f"prompt file {path} is not UTF-8 (line {line}, byte {e.start})") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise PromptFileError(f"prompt file {path} holds a NUL byte (line {line}): it is binary, not text")
    lines = [(i + 1, line) for i, line in enumerate(text.split("\n"))]
    if not path.endswith(".jsonl"):
        return lines
    items = []
    for n, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            items.append((n, obj["prompt"] if isinstance(obj, dict) else obj))
        # ValueError: bad JSON or an integer of over 4300 digits; RecursionError: nesting deeper than Python's stack.
        except (ValueError, KeyError, RecursionError) as e:
            raise PromptFileError(f"{path}:{n}: expected a JSON object with a 'prompt' key ({e!r:.200})") from None
    return items
