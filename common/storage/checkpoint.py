"""Checkpoint directories: safetensors weights plus JSON, written atomically, loaded without unpickling.

Layout of a checkpoint directory::

    config.json          {"kind": ..., "config": {...}, "meta": {...}}
    model.safetensors    the weights
    COMPLETE             written last: a JSON manifest, every other file's size and SHA-256. A directory without it
                         is not a checkpoint; one whose files differ from it is corrupt (:func:`verify_checkpoint`).

A directory is written under a temporary name and renamed into place, so a crash leaves either the old checkpoint
or the new one, never a mix. A training checkpoint adds the optimizer, RNG and stream state as
``train_state.json`` plus ``train_state.safetensors`` (:func:`save_train_state`): no pickle anywhere, so a file
planted in a shared run directory can't run code in the job that resumes from it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

COMPLETE = "COMPLETE"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAIN_STATE = "train_state.json"
TRAIN_TENSORS = "train_state.safetensors"
LEGACY_TRAIN_STATE = "train_state.pt"
_LEGACY_MARKER = b"ok\n"  # what COMPLETE held before it carried a manifest; such checkpoints are checked by parsing
_MARKER_FORMAT = "divcfg-checkpoint-1"
_STATE_FORMAT = "divcfg-train-state-1"


class CheckpointError(ValueError):
    """A checkpoint that can't be loaded; the message names the path and what is wrong."""


class CheckpointFileMissing(CheckpointError, FileNotFoundError):
    """A file a checkpoint's manifest lists is gone; a FileNotFoundError too, as a missing file always was here."""

@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary sibling directory; on success it gets a COMPLETE manifest and replaces ``path``.

    On any failure (a crash in the body, a full disk) ``path`` keeps what it held and the error propagates; an
    OSError is re-raised with the same errno and a message that names the checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        _write_marker(tmp)
        _swap_in(tmp, path)
    except OSError as e:
        # A nested checkpoint (the student inside a training checkpoint) already named its own temporary path: the
        # outermost one names the checkpoint the user knows.
        cause = e.__cause__ if getattr(e, "checkpoint", None) is not None else e
        if not isinstance(cause, OSError) or cause.errno is None:
            raise
        # OSError(errno, ...) builds the errno's own subclass (ENOSPC stays an OSError, ENOENT a FileNotFoundError).
        err = OSError(cause.errno, f"{cause.strerror} while writing checkpoint {path}; what was saved at {path} (if "
                                   f"anything) and every older checkpoint are unchanged", cause.filename)
        err.checkpoint = path
        raise err from cause
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is set aside first and put back if the rename fails."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    _fsync(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_marker(root: Path) -> None:
    """The manifest of every file under ``root``, flushed to disk first: the marker never vouches for data that a
    power cut could still take away."""
    files = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        _fsync(f)
        files[f.relative_to(root).as_posix()] = {"bytes": f.stat().st_size, "sha256": _digest(f)}
    (root / COMPLETE).write_text(json.dumps({"format": _MARKER_FORMAT, "files": files}, indent=1))
    _fsync(root / COMPLETE)


def _read_marker(marker: Path) -> dict | None:
    """The manifest ``{relative path: {"bytes", "sha256"}}``, or None for an old ``ok`` marker."""
    raw = marker.read_bytes()
    if raw == _LEGACY_MARKER:
        return None
    try:
        doc = json.loads(raw.decode("utf-8"))
        files = doc["files"]
        if doc.get("format") != _MARKER_FORMAT or not all(
                isinstance(k, str) and isinstance(v["bytes"], int) and isinstance(v["sha256"], str)
                for k, v in files.items()):
            raise ValueError(f"not a {_MARKER_FORMAT} manifest")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint marker {marker} is truncated or corrupt ({e}), so the checkpoint can't be "
                              f"verified; it is not used") from None
    return files


def verify_checkpoint(path: str | os.PathLike, hashes: bool = True) -> None:
    """Check a checkpoint directory against its COMPLETE manifest: every listed file present, of its recorded size
    and (``hashes``) SHA-256. A checkpoint with an old ``ok`` marker has its JSON and safetensors files parsed
    instead. Raises :class:`CheckpointError` naming the first bad file and what is wrong with it."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory" if path.exists() else
                              f"checkpoint not found: {path}")
    marker = path / COMPLETE
    if not marker.is_file():
        raise CheckpointError(f"checkpoint {path} {_what_it_is(path)}")
    files = _read_marker(marker)
    if files is None:
        _check_parses(path)
        return
    for rel, want in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointFileMissing(f"checkpoint file {f} is missing (listed in {marker})")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"checkpoint file {f} is truncated or overwritten: {size} bytes where {marker} "
                                  f"records {want['bytes']}")
        if hashes and _digest(f) != want["sha256"]:
            raise CheckpointError(f"checkpoint file {f} is corrupt: its SHA-256 differs from the one {marker} records")


def _what_it_is(path: Path) -> str:
    """Why a directory without a COMPLETE marker is not a checkpoint: a half-written one, or something else (a
    Hugging Face model directory, a divcfg world) given where a checkpoint is expected."""
    try:
        header = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError):
        header = None
    if isinstance(header, dict) and "model_type" in header:
        kind = header["model_type"]
        hint = " (MusicGen: pass it as model.musicgen=DIR, or to divcfg sample as it is)" if kind == "musicgen" else ""
        return (f"is a Hugging Face {kind!r} model directory (config.json model_type={kind!r}), not a divcfg "
                f"checkpoint{hint}")
    if (path / "world.json").is_file() or (path / "state.json").is_file() and (path / "codec").is_dir():
        return "is a divcfg world directory, not a checkpoint: its base model is the checkpoint in DIR/base"
    # A run's own checkpoint directory, or one the writer had only just created, was being written when it stopped.
    if isinstance(header, dict) and "kind" in header or path.parent.name == "checkpoints" or not any(path.iterdir()):
        return f"is incomplete (no {COMPLETE} marker): it was not fully written"
    return (f"is not a divcfg checkpoint: it has no {COMPLETE} marker and no divcfg {CONFIG} "
            f"(it holds {sorted(f.name for f in path.iterdir())[:8]})")


def _check_parses(path: Path) -> None:
    for f in sorted(path.rglob("*")):
        try:
            if f.suffix == ".json":
                json.loads(f.read_text("utf-8"))
            elif f.suffix == ".safetensors":
                with safe_open(str(f), "pt"):
                    pass
        except (UnicodeDecodeError, ValueError, SafetensorError, OSError) as e:
            raise CheckpointError(f"checkpoint file {f} is truncated or corrupt: {e}") from None


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / COMPLETE).is_file()


def save_weights(dirpath: str | os.PathLike, kind: str, state_dict: dict[str, torch.Tensor], config: dict,
                 meta: dict | None = None) -> Path:
    """Write ``state_dict`` and ``config`` as a checkpoint directory of ``kind`` (e.g. "policy", "codec")."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_dir(dirpath) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps({"kind": kind, "config": config, "meta": meta or {}}, indent=2))
    return Path(dirpath)


def read_tensors(file: Path, what: str, missing) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; ``missing()`` is the error for an absent file, and a damaged one is a
    :class:`CheckpointError` naming ``what`` and the file."""
    try:
        return load_file(str(file))
    except FileNotFoundError:
        raise missing() from None
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{what} {file} are truncated or corrupt: {e}") from None


def load_weights(dirpath: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Read a checkpoint directory -> ``(state_dict, config, meta)``. Every failure names the path."""
    path = Path(dirpath)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_file():
        raise CheckpointError(f"checkpoint path {path} is a file; pass the checkpoint directory that holds {CONFIG} "
                              f"and {WEIGHTS}")
    verify_checkpoint(path, hashes=False)  # sizes and marker only: hashing every load would cost seconds per GB
    try:
        header = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file not found: {path / CONFIG}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint config {path / CONFIG} is corrupt: {e}") from None
    if kind is not None and header.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} holds a {header.get('kind')!r}, expected a {kind!r}")
    state = read_tensors(path / WEIGHTS, "checkpoint weights",
                         lambda: FileNotFoundError(f"checkpoint file not found: {path / WEIGHTS}"))
    return state, header.get("config", {}), header.get("meta", {})


def newest_verified_checkpoint(run_dir: str | os.PathLike,
                               needs: tuple[str, ...] = ("student",)) -> tuple[Path | None, list[tuple[Path, str]]]:
    """``run.resume=auto``: the newest ``checkpoints/step_*`` of ``run_dir`` that passes :func:`verify_checkpoint`,
    holds a train state and the ``needs`` entries, or None; with the newer ones skipped and why, newest first."""
    skipped = []
    for ck in sorted((Path(run_dir) / "checkpoints").glob("step_*"), reverse=True):
        try:
            verify_checkpoint(ck)
            for name in needs:
                if not (ck / name).exists():
                    raise CheckpointError(f"checkpoint {ck} lacks {name}")
            if not ((ck / TRAIN_STATE).is_file() or (ck / LEGACY_TRAIN_STATE).is_file()):
                raise CheckpointError(f"checkpoint {ck} holds no train state ({TRAIN_STATE} or {LEGACY_TRAIN_STATE})")
        except CheckpointError as e:
            skipped.append((ck, str(e)))
            continue
        return ck, skipped
    return None, skipped
