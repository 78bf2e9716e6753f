"""The independent judge: Spotify's pretrained Basic Pitch transcriber (ONNX, from the ``basic-pitch`` wheel), then
rules on the transcribed notes. Nobody here trained it, so it checks the trained scorer.

Attributes it reads: mode (music21's key analysis of the notes), register (median pitch), texture (how much of the
time two or more notes sound) and density (onsets per second). The thresholds are the world's, passed in as
:class:`PitchJudgeConfig` (the world writes them to its directory; this module imports no world).

The windowing and note decoding follow basic_pitch.inference / note_creation (onset peaks, then frames held above a
threshold); they are re-implemented here with numpy so that the judge needs only onnxruntime, not basic-pitch's
librosa/resampy/TensorFlow stack. Basic Pitch's "melodia trick" (notes without an onset) is left out: every judged
quantity here counts onsets or onset-started notes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF

# Basic Pitch's fixed front end (basic_pitch/constants.py).
_SR = 22050
_HOP = 256
_WINDOW = 2 * _SR - _HOP           # samples per model window
_OVERLAP_FRAMES = 30
_OVERLAP = _OVERLAP_FRAMES * _HOP
_MIDI_OFFSET = 21                  # the lowest of 88 note bins is A0
_FPS = _SR / _HOP
JUDGED = ("mode", "register", "texture", "density")  # the attributes the judge reads


@dataclass(frozen=True)
class PitchJudgeConfig:
    """Thresholds that turn transcribed notes into attribute values (the world's definitions)."""

    register_bounds: tuple[float, float] = (55.0, 71.0)
    """Median MIDI pitch below the first: low; below the second: middle; else high."""
    density_bounds: tuple[float, float] = (2.5, 5.0)
    """Onsets per second (onsets within 50 ms count once) bounding sparse / medium / dense."""
    polyphony_fraction: float = 0.3
    """texture is "voices" when at least this fraction of onset groups (onsets within 50 ms) holds two pitches a
    third, fourth, sixth, second or seventh apart (octaves and twelfths are left out: they are what organ stops and
    an instrument's own overtones add to a single line)."""
    onset_threshold: float = 0.5
    """Basic Pitch's default onset threshold."""
    frame_threshold: float = 0.3
    """Basic Pitch's default frame threshold."""
    min_note_frames: int = 11
    """Basic Pitch's default minimum note length (127.7 ms) in frames."""

    @staticmethod
    def from_dict(d: dict) -> "PitchJudgeConfig":
        known = PitchJudgeConfig.__dataclass_fields__
        bad = sorted(set(d) - set(known))
        if bad:
            raise ValueError(f"pitch judge config: unknown field(s) {bad}; known: {sorted(known)}")
        return PitchJudgeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def model_path() -> str:
    """The ONNX model inside the basic-pitch wheel; a clear error when the package is missing."""
    try:
        import basic_pitch
    except ImportError:
        raise ImportError("the independent judge needs basic-pitch: pip install --no-deps basic-pitch onnxruntime "
                          "(or `make`, which installs both)") from None
    return os.path.join(os.path.dirname(basic_pitch.__file__), "saved_models", "icassp_2022", "nmp.onnx")


class PitchJudge:
    """Basic Pitch transcription plus the attribute rules of :class:`PitchJudgeConfig`."""

    def __init__(self, cfg: PitchJudgeConfig = PitchJudgeConfig(), threads: int = 1):

        path = model_path()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("the independent judge needs onnxruntime: pip install onnxruntime (or `make`, which "
                              "installs the music extra)") from None
        # basic_pitch/__init__ warns once per missing backend (TF, CoreML, TFLite); only ONNX is used here.
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.cfg = cfg

    def posteriors(self, wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """Note and onset posteriors ``[frames, 88]`` of one clip ``wav [samples]`` (float32, any rate)."""

        x = AF.resample(torch.as_tensor(np.asarray(wav, np.float32)), sample_rate, _SR).numpy()
        n_frames = int(np.floor(len(x) * _FPS / _SR))
        x = np.concatenate([np.zeros(_OVERLAP // 2, np.float32), x])
        hop = _WINDOW - _OVERLAP
        windows = [x[i: i + _WINDOW] for i in range(0, len(x), hop)]
        batch = np.stack([np.pad(w, (0, _WINDOW - len(w))) for w in windows])[..., None]
        # Output 1 is the note posterior, 2 the onset posterior (0, the pitch contour, is not used).
        out = self.session.run(["StatefulPartitionedCall:1", "StatefulPartitionedCall:2"],
                               {"serving_default_input_2:0": batch})
        half = _OVERLAP_FRAMES // 2
        note, onset = (o[:, half:-half].reshape(-1, o.shape[-1])[:n_frames] for o in out)
        return note, onset

    def transcribe(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """Notes ``[M, 3]`` float: onset s, offset s, MIDI pitch; sorted by onset."""
        frames, onsets = self.posteriors(wav, sample_rate)
        return decode_notes(frames, onsets, self.cfg)

    def read(self, wav: np.ndarray, sample_rate: int) -> dict[str, str | None]:
        """Attribute values heard in one clip: mode, register, texture, density (None: no notes heard)."""
        return read_attributes(self.transcribe(wav, sample_rate), len(wav) / sample_rate, self.cfg)


def _inferred_onsets(onsets: np.ndarray, frames: np.ndarray, n_diff: int = 2) -> np.ndarray:
    """Basic Pitch's onset inference: add onsets where the frame posterior jumps up."""
    diffs = []
    for n in range(1, n_diff + 1):
        shifted = np.concatenate([np.zeros((n, frames.shape[1])), frames])
        diffs.append(shifted[n:] - shifted[:-n])
    diff = np.maximum(np.min(diffs, axis=0), 0)
    diff[:n_diff] = 0
    if diff.max() > 0:
        diff = onsets.max() * diff / diff.max()
    return np.maximum(onsets, diff)


def decode_notes(frames: np.ndarray, onsets: np.ndarray, cfg: PitchJudgeConfig, energy_tol: int = 11) -> np.ndarray:
    """Notes ``[M, 3]`` (onset s, offset s, MIDI pitch) from posteriors ``[T, 88]``, as Basic Pitch decodes them:
    each onset peak starts a note that lasts while its frame posterior stays above threshold."""
    T = frames.shape[0]
    if T < 3:
        return np.zeros((0, 3))
    onsets = _inferred_onsets(onsets, frames)
    peaks = np.zeros_like(onsets)
    inner = (onsets[1:-1] > onsets[:-2]) & (onsets[1:-1] > onsets[2:])  # local maxima in time (argrelmax)
    peaks[1:-1][inner] = onsets[1:-1][inner]
    t_idx, f_idx = np.nonzero(peaks >= cfg.onset_threshold)
    remaining = frames.copy()
    notes = []
    for start, f in sorted(zip(t_idx.tolist(), f_idx.tolist()), reverse=True):  # backwards in time, as Basic Pitch
        if start >= T - 1:
            continue
        i, k = start + 1, 0
        while i < T - 1 and k < energy_tol:
            k = k + 1 if remaining[i, f] < cfg.frame_threshold else 0
            i += 1
        i -= k
        if i - start <= cfg.min_note_frames:
            continue
        remaining[start:i, max(f - 1, 0): f + 2] = 0
        notes.append((start / _FPS, i / _FPS, f + _MIDI_OFFSET))
    return np.array(sorted(notes), dtype=np.float64).reshape(-1, 3)


def key_mode(notes: np.ndarray) -> str | None:
    """major or minor by music21's key analysis of the notes (durations weight the pitch classes)."""
    if len(notes) == 0:
        return None
    from music21 import note as m21note  # optional extra (divcfg[music])
    from music21 import stream  # optional extra (divcfg[music])

    s = stream.Stream()
    for on, off, pitch in notes:
        n = m21note.Note(int(pitch))
        n.quarterLength = max(0.25, round(4 * (off - on)) / 4)  # seconds as quarters: only the proportions matter
        s.insert(round(4 * on) / 4, n)
    return s.analyze("key").mode


def _has_harmony(pitches: np.ndarray) -> bool:
    """Whether two of ``pitches`` sound an interval other than unison, octave or twelfth (mod 12: 0 or 7)."""
    classes = np.unique(pitches % 12)
    return any((b - a) % 12 not in (0, 7) for i, a in enumerate(classes) for b in classes[i + 1:])


def read_attributes(notes: np.ndarray, duration_s: float, cfg: PitchJudgeConfig) -> dict[str, str | None]:
    """mode, register, texture and density of a clip from its notes ``[M, 3]`` (None for all when M == 0)."""
    if len(notes) == 0:
        return {"mode": None, "register": None, "texture": None, "density": None}
    low, high = cfg.register_bounds
    median = float(np.median(notes[:, 2]))
    register = "low" if median < low else ("middle" if median < high else "high")
    order = np.argsort(notes[:, 0], kind="stable")
    starts, pitches = notes[order, 0], notes[order, 2].astype(int)
    group = np.concatenate([[0], np.cumsum(np.diff(starts) > 0.05)])  # onsets within 50 ms are one event
    n_groups = int(group[-1]) + 1
    poly = sum(_has_harmony(pitches[group == g]) for g in range(n_groups)) / n_groups
    rate = n_groups / duration_s
    dlow, dhigh = cfg.density_bounds
    return {"mode": key_mode(notes), "register": register,
            "texture": "voices" if poly >= cfg.polyphony_fraction else "solo",
            "density": "sparse" if rate < dlow else ("medium" if rate < dhigh else "dense")}


def judge_hits(judge: PitchJudge, clips: np.ndarray, sample_rate: int,
               attributes: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """Per attribute the judge reads, float ``[n]``: 1 where it agrees with the label, over the clips of ``clips
    [N, S]`` whose ``attributes`` label it, in order (the same clips for any audio of the same labelled clips)."""
    hits: dict[str, list[bool]] = {name: [] for name in JUDGED}
    for wav, truth in zip(clips, attributes):
        heard = judge.read(wav, sample_rate)
        for name in hits:
            if name in truth:
                hits[name].append(heard[name] == truth[name])
    return {name: np.asarray(h, dtype=float) for name, h in hits.items()}


def judge_accuracy(judge: PitchJudge, clips: np.ndarray, sample_rate: int,
                   attributes: list[dict[str, str]]) -> dict[str, float | None]:
    """Per attribute the judge reads, the fraction of ``clips [N, S]`` where it agrees with ``attributes`` (labels);
    None for an attribute no clip labels."""
    return {name: (float(h.mean()) if h.size else None)
            for name, h in judge_hits(judge, clips, sample_rate, attributes).items()}


CONFIG_FILE = "pitch_judge.json"


def save_pitch_judge_config(cfg: PitchJudgeConfig, world_dir: str | os.PathLike) -> None:
    """Write the thresholds a world defines its attributes by, so its judges read clips by the same rules."""

    with open(os.path.join(os.fspath(world_dir), CONFIG_FILE), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)


def load_pitch_judge(world_dir: str | os.PathLike) -> PitchJudge | None:
    """The world's independent judge, or None for a world without ``pitch_judge.json`` (the procedural world)."""

    path = os.path.join(os.fspath(world_dir), CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            cfg = PitchJudgeConfig.from_dict(json.load(f))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
    return PitchJudge(cfg)


def judge_adherence(judge: PitchJudge, clips: np.ndarray, sample_rate: int,
                    requested: list[dict[str, str]]) -> np.ndarray:
    """float64 ``[N]``: per clip, the fraction of requested attributes among :data:`JUDGED` that the judge hears as
    requested; NaN where none is requested (nothing to judge), so average with ``nanmean``."""
    out = np.full(len(requested), np.nan)
    for i, (wav, asked) in enumerate(zip(clips, requested)):
        names = [n for n in JUDGED if n in asked]
        if names:
            heard = judge.read(wav, sample_rate)
            out[i] = float(np.mean([heard[n] == asked[n] for n in names]))
    return out
