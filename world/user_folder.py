"""A user's own folder of audio and the captions that describe it, read for a folder world and cut into training clips.

Captions come in the formats the ecosystem already writes (see ``KNOWN_FORMATS``): audiocraft's ``data.jsonl``
manifest with a ``.json`` beside each audio file, a Hugging Face ``audiofolder`` ``metadata.csv``/``metadata.jsonl``,
or a plain ``path,caption`` CSV or JSONL. :func:`read_captions` reads any of them into :class:`Captions`;
:func:`read_folder` decodes and cuts every captioned file into :class:`FolderClips` (the cutting and the split by
track are common/data/folder.py's, shared with ``divcfg tokenize`` and ``divcfg embedder train``). A bad row or file
never stops the read: it is named in ``skipped`` with its reason, so the user can fix the folder from the world's
summary.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from divcfg.common.data.audio import AUDIO_SUFFIXES, AudioError, read_audio
from divcfg.common.data.folder import SILENCE_RMS, cut_clips, find_audio
from divcfg.common.data.prompts import load_prompts

# format name -> what it looks like; every "unknown format" error lists these.
KNOWN_FORMATS: dict[str, str] = {
    "audiocraft": "a data.jsonl (or .jsonl.gz) manifest with a 'path' per line and, beside each audio file, "
                  "a <stem>.json whose 'description' is the caption",
    "audiofolder-csv": "a Hugging Face audiofolder metadata.csv with file_name,text columns",
    "audiofolder-jsonl": "a Hugging Face audiofolder metadata.jsonl with 'file_name' and 'text' keys",
    "csv": "a CSV with a path,caption header",
    "jsonl": "a JSONL with 'path' and 'caption' keys",
}
# The files read_captions looks for when it is given a folder instead of a caption file.
CAPTION_FILE_NAMES = ("data.jsonl", "data.jsonl.gz", "metadata.csv", "metadata.jsonl")


@dataclass
class Captions:
    """The captions of a folder's audio files, and every row or file that could not be used."""

    by_file: dict[str, list[str]]
    """Audio path relative to the audio root (POSIX separators) -> its captions, in file order, without repeats."""
    skipped: dict[str, str]
    """A caption row (``"captions.csv:4"``) or an audio file without a caption (its relative path) -> the reason."""
    format: str
    """The caption format read, a key of ``KNOWN_FORMATS``."""


@dataclass
class FolderClips:
    """A folder cut into equal-length clips, each with its source track and captions."""

    clips: np.ndarray
    """``[N, samples]`` float32 in [-1, 1], mono, at the target sample rate."""
    track: list[str]
    """``[N]`` the source file of each clip, relative to the audio root."""
    captions: list[list[str]]
    """``[N]`` the captions of each clip (those of its track)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """File or caption row -> why it gave no clips (caption-level skips included)."""
    seconds: float = 0.0
    """Total duration of ``clips``."""

    def summary(self) -> dict:
        """Counts and skip reasons, JSON-ready, for a world.json."""
        return {"clips": int(len(self.clips)), "tracks": len(set(self.track)), "seconds": round(self.seconds, 3),
                "skipped": len(self.skipped), "skipped_reasons": dict(sorted(self.skipped.items()))}


class _Skip(Exception):
    """A caption row that cannot be used; the message is its reason."""


# ---- captions -------------------------------------------------------------------------------------------------------

def read_captions(audio_root: str | os.PathLike, captions: str | os.PathLike) -> Captions:
    """Read the captions of the audio under ``audio_root`` from ``captions``, in any of ``KNOWN_FORMATS``.

    ``captions`` is a caption file, or a folder (the audio root, say) holding one of ``CAPTION_FILE_NAMES``. Rows
    naming a missing or non-audio file, repeating a (file, caption) pair, or with an empty caption are skipped and
    named, as are audio files that end up with no caption. Raises ValueError, naming the file, when the audio folder
    or caption file is missing or the caption file is in no known format.
    """
    root = Path(audio_root)
    if not root.is_dir():
        raise ValueError(f"audio folder not found: {root}")
    path = _caption_file(Path(captions))
    fmt, rows = _read_rows(path, root)
    out = Captions(by_file={}, skipped={}, format=fmt)
    first_at: dict[tuple[str, str], str] = {}  # (file, caption) -> the row that gave it first
    rejected: dict[str, str] = {}  # file -> its first skipped row, so a file left without captions points to it
    for where, file, base, caption in rows:
        try:
            rel = _relative_audio_path(file, base, root)
        except _Skip as e:
            out.skipped[where] = str(e)
            continue
        try:
            if isinstance(caption, Path):  # audiocraft: the caption is in the sidecar JSON
                caption = _sidecar_description(caption)
            texts = _caption_texts(caption)
        except _Skip as e:
            out.skipped[where] = f"{rel}: {e}"
            rejected.setdefault(rel, where)
            continue
        for i, text in enumerate(texts):
            key = where if len(texts) == 1 else f"{where} [{i}]"
            if not text:
                out.skipped[key] = f"empty caption for {rel}"
                rejected.setdefault(rel, key)
            elif (rel, text) in first_at:
                out.skipped[key] = f"duplicate caption {text!r} for {rel} (first at {first_at[rel, text]})"
            else:
                first_at[rel, text] = key
                out.by_file.setdefault(rel, []).append(text)
    for rel in find_audio(root):
        rel = rel.as_posix()
        if rel not in out.by_file:
            out.skipped[rel] = f"no caption in {path.name}" + (f" (see {rejected[rel]})" if rel in rejected else "")
    return out


def _caption_file(path: Path) -> Path:
    if path.is_dir():
        found = [path / n for n in CAPTION_FILE_NAMES if (path / n).is_file()]
        if len(found) != 1:
            names = ", ".join(p.name for p in found)
            what = f"{len(found)} caption files ({names})" if found else "no caption file"
            raise ValueError(f"{what} in {path}: expected exactly one of {', '.join(CAPTION_FILE_NAMES)}; "
                             f"known formats: {_known()}")
        return found[0]
    if not path.is_file():
        raise ValueError(f"caption file not found: {path}")
    return path


def _known() -> str:
    return "; ".join(f"{name}: {what}" for name, what in KNOWN_FORMATS.items())


def _read_rows(path: Path, root: Path) -> tuple[str, list[tuple[str, object, Path, object]]]:
    """The caption file -> (format, rows of (where, audio path as written, its base folder, caption as read)).

    An audiocraft row's caption is the Path of its sidecar JSON, read later, once its audio file is known to exist.
    """
    name = path.name.lower()
    if name.endswith(".csv"):
        return _csv_rows(path, root)
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _jsonl_rows(path, root)
    raise ValueError(f"caption file {path}: unknown format (suffix {path.suffix or '(none)'!r}); "
                     f"known formats: {_known()}")


def _read_text(path: Path) -> str:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
        # utf-8-sig: spreadsheet programs start a CSV export with a byte-order mark
        return raw.decode("utf-8-sig")
    except (OSError, EOFError) as e:  # gzip raises these for a truncated or non-gzip file
        raise ValueError(f"caption file {path} cannot be read ({e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"caption file {path} is not UTF-8 (byte {e.start})") from None


def _csv_rows(path: Path, root: Path) -> tuple[str, list]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    if "file_name" in columns and "text" in columns:
        fmt, path_key, caption_key, base = "audiofolder-csv", "file_name", "text", path.parent
    elif "path" in columns and "caption" in columns:
        fmt, path_key, caption_key, base = "csv", "path", "caption", root
    else:
        raise ValueError(f"caption file {path}: CSV header {columns} is in no known format; "
                         f"known formats: {_known()}")
    rows = []
    for rec in reader:  # line_num after a record is its last line, which is its line unless a field spans lines
        rows.append((f"{path.name}:{reader.line_num}", rec.get(path_key), base, rec.get(caption_key)))
    return fmt, rows


def _jsonl_rows(path: Path, root: Path) -> tuple[str, list]:
    records, bad = [], []
    for n, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        try:
            obj = json.loads(line)
        # ValueError: bad JSON or an integer of over 4300 digits; RecursionError: nesting deeper than Python's stack.
        except (ValueError, RecursionError) as e:
            bad.append((where, f"not valid JSON ({e!s:.100})"))
            continue
        if isinstance(obj, dict):
            records.append((where, obj))
        else:
            bad.append((where, f"a JSON {type(obj).__name__}, not an object"))
    if not records:
        first = f" ({bad[0][0]}: {bad[0][1]})" if bad else ""
        raise ValueError(f"caption file {path} holds no JSON object lines{first}; known formats: {_known()}")
    keys = records[0][1].keys()
    if "file_name" in keys:
        fmt = "audiofolder-jsonl"
        rows = [(w, r.get("file_name"), path.parent, r.get("text")) for w, r in records]
    elif "path" in keys and "caption" in keys:
        fmt = "jsonl"
        rows = [(w, r.get("path"), root, r.get("caption")) for w, r in records]
    elif "path" in keys and ("duration" in keys or path.name.lower().startswith("data.jsonl")):
        # audiocraft's AudioMeta lines: path, duration, sample_rate, ...; the caption lives beside the audio
        fmt = "audiocraft"
        rows = [(w, r.get("path"), root, _sidecar_path(r.get("path"), root)) for w, r in records]
    else:
        raise ValueError(f"caption file {path}: keys {sorted(keys)} of its first record are in no known format; "
                         f"known formats: {_known()}")
    # Unparseable lines are rows too: each reaches the collector as a row whose path check fails with its reason.
    return fmt, rows + [(w, _Bad(reason), root, None) for w, reason in bad]


@dataclass(frozen=True)
class _Bad:
    """Stands in for the audio path of a row that could not be parsed."""

    reason: str


def _sidecar_path(file: object, root: Path) -> Path | None:
    if not isinstance(file, str) or not file.strip():
        return None
    p = Path(file)
    return (p if p.is_absolute() else root / p).with_suffix(".json")


def _sidecar_description(path: Path) -> object:
    if not path.is_file():
        raise _Skip(f"no sidecar {path.name} beside the audio file (audiocraft keeps the description there)")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise _Skip(f"sidecar {path} is not readable JSON ({e!s:.100})") from None
    if not isinstance(obj, dict) or "description" not in obj:
        raise _Skip(f"sidecar {path} has no 'description'")
    return obj["description"]


def _relative_audio_path(file: object, base: Path, root: Path) -> str:
    """A row's audio path -> its path relative to the audio root (POSIX), or _Skip saying why it can't be used."""
    if isinstance(file, _Bad):
        raise _Skip(file.reason)
    if not isinstance(file, str) or not file.strip():
        raise _Skip(f"no audio path (got {file!r})")
    p = Path(file.strip())
    full = os.path.normpath((p if p.is_absolute() else base / p).absolute())
    rel = os.path.relpath(full, os.path.normpath(root.absolute()))
    if rel == ".." or rel.startswith(".." + os.sep):
        raise _Skip(f"audio path {file!r} is outside the audio folder {root}")
    if p.suffix.lower() not in AUDIO_SUFFIXES:
        raise _Skip(f"audio path {file!r} is not a {'/'.join(AUDIO_SUFFIXES)} file")
    if not os.path.isfile(full):
        raise _Skip(f"caption for a missing audio file {file!r} ({full})")
    return Path(rel).as_posix()


def _caption_texts(caption: object) -> list[str]:
    """A caption as read (text, a list of texts, or None) -> stripped texts; an empty one stays, to be named."""
    if caption is None:
        return [""]
    items = caption if isinstance(caption, list) else [caption]
    if not all(isinstance(c, str) for c in items):
        raise _Skip(f"caption {caption!r:.100} is not text or a list of texts")
    return [c.strip() for c in items] or [""]


def first_skipped(skipped: dict[str, str], n: int = 3) -> str:
    """The first ``n`` skipped files with their reasons, for a message (world.json keeps them all)."""
    return "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:n])


def read_folder(audio_root: str | os.PathLike, captions: str | os.PathLike, target_sr: int,
                clip_s: float) -> FolderClips:
    """Read the captions, then decode and cut every captioned file into clips of ``clip_s`` at ``target_sr``.

    A file that is unreadable, silent or shorter than one clip is skipped with its reason. Raises ValueError naming
    the folder (and the first reasons) when no file gives a clip.
    """
    root = Path(audio_root)
    caps = read_captions(root, captions)
    skipped = dict(caps.skipped)
    clips: list[np.ndarray] = []
    track: list[str] = []
    clip_captions: list[list[str]] = []
    for rel in sorted(caps.by_file):
        try:
            x, sr = read_audio(root / rel)
        except AudioError as e:
            skipped[rel] = f"unreadable: {e}"
            continue
        cut = cut_clips(x, sr, target_sr, clip_s)
        if not cut:
            seconds = len(x) / sr
            skipped[rel] = (f"shorter than one clip ({seconds:.2f} s < {clip_s:g} s)" if seconds < clip_s
                            else f"silent (no {clip_s:g} s clip with RMS >= {SILENCE_RMS:g})")
            continue
        clips.extend(cut)
        track.extend([rel] * len(cut))
        clip_captions.extend(list(caps.by_file[rel]) for _ in cut)
    if not clips:
        first = first_skipped(skipped)
        raise ValueError(f"audio folder {root} (captions {captions}) gives no {clip_s:g} s clip; "
                         f"{len(skipped)} skipped" + (f", first: {first}" if first else "")
                         + ("; a shorter --clip-s keeps shorter files" if any("shorter than one clip" in v for v in
                                                                             skipped.values()) else ""))
    size = round(clip_s * target_sr)
    return FolderClips(clips=np.stack(clips).astype(np.float32, copy=False), track=track, captions=clip_captions,
                       skipped=skipped, seconds=len(clips) * size / target_sr)


def read_heldout_prompts(path: str | os.PathLike, train_prompts: list[str]) -> list[str]:
    """Held-out prompts, one per line of a text file (blank lines ignored).

    Raises ValueError naming the file and the prompts when any is also a training prompt, since a held-out prompt
    seen in training measures memory, not generalisation.
    """
    prompts = load_prompts(path)
    overlap = sorted(set(prompts) & {p.strip() for p in train_prompts})
    if overlap:
        more = f" and {len(overlap) - 10} more" if len(overlap) > 10 else ""
        shown = ", ".join(repr(p) for p in overlap[:10]) + more
        raise ValueError(f"held-out prompt file {path}: {len(overlap)} prompt(s) are also training prompts: {shown}")
    return prompts
