"""A procedural text-to-music world: seeded synthetic melodies with known attributes, and partial text prompts.

Each clip draws one value per attribute of :data:`ATTRIBUTES` and is synthesised from those values with numpy. Its
prompt mentions only a random subset of the attributes, so one prompt fits clips that differ in everything it leaves
out: p(audio | prompt) is multi-modal, which is what makes the diversity of a distilled model measurable. Since every
clip's attributes are known, adherence and diversity of generated audio can be scored by attribute classifiers.

Clip ``i`` of a corpus depends only on ``(seed, i)``, so a corpus can be generated in shards by different processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from divcfg.common.data.captions import ATTRIBUTES, attribute_labels, make_prompt


@dataclass
class WorldConfig:
    """How a corpus is generated. Clip ``i`` depends only on ``seed``, ``i`` and the audio/prompt settings."""

    seed: int = 0
    """Seed of the corpus; clip ``i`` draws from ``np.random.default_rng([seed, i])``."""
    n_clips: int = 2000
    """Number of clips in the corpus (clip ids ``0 .. n_clips-1``)."""
    duration_s: float = 3.0
    """Length of every clip in seconds (2 to 4 is the intended range)."""
    sample_rate: int = 16000
    """Audio sample rate in Hz."""
    min_described: int = 1
    """Fewest attributes a prompt mentions (0 allows bare prompts such as "a melody")."""
    max_described: int = 3
    """Most attributes a prompt mentions; the rest are left free, which makes prompts multi-modal."""

    def __post_init__(self):
        if self.n_clips < 0:
            raise ValueError(f"WorldConfig.n_clips must be >= 0, got {self.n_clips}")
        # Below half a second a clip may hold no complete note or beat, so its tempo and density are inaudible.
        if not self.duration_s >= 0.5:
            raise ValueError(f"WorldConfig.duration_s must be >= 0.5, got {self.duration_s}")
        # The highest note (~1.6 kHz) must stay below Nyquist.
        if self.sample_rate < 4000:
            raise ValueError(f"WorldConfig.sample_rate must be >= 4000 Hz, got {self.sample_rate}")
        if not 0 <= self.min_described <= self.max_described <= len(ATTRIBUTES):
            raise ValueError(f"WorldConfig needs 0 <= min_described <= max_described <= {len(ATTRIBUTES)}, got "
                             f"min_described={self.min_described}, max_described={self.max_described}")


@dataclass
class Clip:
    """One corpus item: audio, its full attributes and the partial prompt that describes it."""

    clip_id: int
    prompt: str
    attributes: dict[str, str]
    """All attributes of the clip, in ATTRIBUTES order."""
    described: tuple[str, ...]
    """Names of the attributes the prompt mentions, in ATTRIBUTES order."""
    audio: np.ndarray
    """float32 ``[n_samples]`` in [-1, 1]; ``[0]`` when read from a corpus written without audio."""

    def __eq__(self, other) -> bool:
        # The generated __eq__ would compare audio element-wise and fail on the array's truth value.
        if not isinstance(other, Clip):
            return NotImplemented
        return ((self.clip_id, self.prompt, self.attributes, self.described)
                == (other.clip_id, other.prompt, other.attributes, other.described)
                and self.audio.dtype == other.audio.dtype and np.array_equal(self.audio, other.audio))


# ---- synthesis ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Timbre:
    ratios: tuple[float, ...]
    """Partial frequencies as multiples of the note's fundamental."""
    amps: tuple[float, ...]
    """Amplitude of each partial."""
    decays: tuple[float, ...]
    """Exponential decay rate of each partial, 1/s; 0 sustains."""
    attack_s: float
    release_s: float
    ring_s: float
    """> 0: every note rings this long whatever the rhythm (struck bars); 0: a note stops at its gate."""
    tremolo: float
    """Depth of a 5.5 Hz amplitude modulation."""


_HARMONICS = tuple(float(k) for k in range(1, 13))
_TIMBRES: dict[str, _Timbre] = {
    "sine": _Timbre((1.0,), (1.0,), (0.0,), 0.01, 0.05, 0.0, 0.0),
    "square": _Timbre(tuple(float(k) for k in range(1, 16, 2)), tuple(1.0 / k for k in range(1, 16, 2)), (0.0,) * 8,
                      0.005, 0.04, 0.0, 0.0),
    "sawtooth": _Timbre(_HARMONICS, tuple(1.0 / k for k in _HARMONICS), (0.0,) * 12, 0.005, 0.04, 0.0, 0.0),
    # Upper harmonics of a string die first, so the tone darkens as it decays.
    "plucked": _Timbre(_HARMONICS, tuple(1.0 / k ** 1.2 for k in _HARMONICS), tuple(2.5 + 2.0 * k for k in _HARMONICS),
                       0.002, 0.03, 0.0, 0.0),
    # Drawbar organ: a sub-octave and octave-spaced pipes, slow attack, tremolo.
    "organ": _Timbre((0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0), (0.4, 1.0, 0.7, 0.35, 0.45, 0.2, 0.2), (0.0,) * 7,
                     0.03, 0.08, 0.0, 0.2),
    # The inharmonic modes of a free bar (glockenspiel) ring on past the next note.
    "bell": _Timbre((1.0, 2.756, 5.404, 8.933), (1.0, 0.5, 0.3, 0.15), (1.2, 2.5, 4.5, 7.0), 0.001, 0.05, 1.2, 0.0),
}
_BPM = {"slow": 72.0, "moderate": 108.0, "fast": 156.0}
# Lowest root (MIDI note) of each register; the root is drawn from the 6 semitones above and melodies span an octave,
# so registers never overlap: low 36..53 (65-175 Hz), middle 55..72 (196-523 Hz), high 74..91 (587-1568 Hz).
_LOWEST_ROOT = {"low": 36, "middle": 55, "high": 74}
_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10), "pentatonic": (0, 2, 4, 7, 9),
           "whole-tone": (0, 2, 4, 6, 8, 10)}
# A tonic chord under the melody, one per bar. Major and natural minor use the same intervals, only their tonic
# differs, so without the chord the mode is hardly audible; the chords also differ in their own interval stacks.
_CHORDS = {"major": (0, 4, 7), "minor": (0, 3, 7), "pentatonic": (0, 2, 7), "whole-tone": (0, 4, 8)}
_CHORD_GAIN = 0.25
# (grid slots per beat, probability of a note on a beat slot, on an off-beat slot): about 0.5, 1.6 and 3.6 notes a
# beat. Notes on the beat coincide with the ticks, so the off-beat notes are what make density audible.
_DENSITY = {"sparse": (1, 0.5, 0.0), "medium": (2, 1.0, 0.6), "dense": (4, 1.0, 0.85)}
# (gain at the start, gain at the end), interpolated in dB over the clip.
_DYNAMICS = {"soft": (0.15, 0.15), "loud": (0.8, 0.8), "crescendo": (0.07, 0.85), "decrescendo": (0.85, 0.07)}
# Melodic steps in scale degrees; mostly stepwise motion, like a sung tune.
_STEPS = np.array([-3, -2, -1, 0, 1, 2, 3])
_STEP_P = np.array([0.05, 0.2, 0.22, 0.06, 0.22, 0.2, 0.05])


def _rhythm(rng: np.random.Generator, density: str, beat_s: float, start_s: float, duration_s: float):
    """Note onsets ``[M]`` (s), the time each note's slot ends ``[M]`` (s), and whether each onset is on a beat."""
    per_beat, p_beat, p_offbeat = _DENSITY[density]
    slot_s = beat_s / per_beat
    slots = np.arange(int(np.ceil((duration_s - start_s) / slot_s)))
    on_beat = slots % per_beat == 0
    keep = rng.random(len(slots)) < np.where(on_beat, p_beat, p_offbeat)
    keep[0] = True
    # A few ms of human timing; slots are >= 90 ms apart, so onsets stay in order.
    onsets = np.maximum(start_s + slots[keep] * slot_s + rng.uniform(-0.004, 0.004, keep.sum()), 0.0)
    return onsets, np.append(onsets[1:], duration_s), on_beat[keep]


def _melody(rng: np.random.Generator, root: int, mode: str, n_notes: int) -> np.ndarray:
    """MIDI pitches ``[n_notes]``: a random walk over the octave above ``root`` in the scale of ``mode``, from and to
    the tonic."""
    pitches = root + np.array([*_SCALES[mode], 12])
    top = len(pitches) - 1
    walk = np.cumsum(np.concatenate([[rng.choice([0, top])], rng.choice(_STEPS, size=n_notes - 1, p=_STEP_P)]))
    # Reflect at both ends of the octave so that the walk stays in it without piling up at the edges.
    folded = walk % (2 * top)
    degrees = np.where(folded > top, 2 * top - folded, folded)
    degrees[-1] = 0 if degrees[-1] < top / 2 else top
    return pitches[degrees]


def _render_notes(timbre: str, onsets: np.ndarray, offs: np.ndarray, freqs: np.ndarray, gains: np.ndarray,
                  sample_rate: int, n: int) -> np.ndarray:
    """float32 ``[n]``: notes ``[M]`` (onset and gate-off in s, fundamental in Hz, gain) summed."""
    spec = _TIMBRES[timbre]
    ratios, amps, decays = (np.asarray(x, dtype=np.float32) for x in (spec.ratios, spec.amps, spec.decays))
    out = np.zeros(n, np.float32)
    # float32 throughout: numpy's float32 sin is vectorised and ~40x faster than float64's, and its phase error
    # (< 0.005 rad on the highest partials of a 1 s note) is far below the noise floor.
    for onset, off, freq, gain in zip(onsets.tolist(), offs.tolist(), freqs.tolist(), gains.tolist()):
        start = int(onset * sample_rate)
        hold = spec.ring_s or off - onset
        t = np.arange(min(int((hold + spec.release_s) * sample_rate), n - start), dtype=np.float32) / sample_rate
        # Partials above 0.45 * sample rate would alias back as inharmonic tones.
        keep = ratios * freq < 0.45 * sample_rate
        partials = np.sin(np.multiply.outer((2 * np.pi * freq) * ratios[keep], t))
        if decays.any():
            weights = np.exp(np.multiply.outer(-decays[keep], t))
            wave = np.einsum("p,pl,pl->l", amps[keep], weights, partials)
        else:
            wave = amps[keep] @ partials
        env = np.minimum(t / spec.attack_s, 1.0) * np.clip((hold + spec.release_s - t) / spec.release_s, 0.0, 1.0)
        if spec.tremolo:
            env *= 1.0 + spec.tremolo * np.sin((2 * np.pi * 5.5) * t)
        out[start:start + len(t)] += gain * env * wave
    return out


def _render_ticks(rng: np.random.Generator, beats: np.ndarray, sample_rate: int, n: int) -> np.ndarray:
    """float32 ``[n]``: a hi-hat tick on every beat ``[B]`` (s), accented every 4th beat.

    The ticks make tempo audible on its own: without them a slow dense clip has the note rate of a fast sparse one.
    """
    t = np.arange(int(0.05 * sample_rate), dtype=np.float32) / sample_rate
    # Differenced white noise is tilted towards high frequencies, away from the melody.
    tick = np.diff(rng.standard_normal(len(t) + 1, dtype=np.float32)) * np.exp(t / -0.012)
    tick /= np.abs(tick).max()
    out = np.zeros(n, np.float32)
    for k, beat in enumerate(beats.tolist()):
        start = int(beat * sample_rate)
        length = min(len(t), n - start)
        out[start:start + length] += (0.35 if k % 4 == 0 else 0.22) * tick[:length]
    return out


def synthesize(rng: np.random.Generator, attributes: dict[str, str], cfg: WorldConfig) -> np.ndarray:
    """float32 ``[round(cfg.duration_s * cfg.sample_rate)]`` in [-1, 1]: a random clip with the given attributes.

    Within one set of attributes the root, melody, rhythm, exact tempo, tuning, articulation, levels and noise are
    drawn from ``rng``, so clips that share all attributes still differ.
    """
    attribute_labels(attributes)  # validates the names and values
    sr, duration = cfg.sample_rate, cfg.duration_s
    n = int(round(duration * sr))
    beat_s = 60.0 / (_BPM[attributes["tempo"]] * rng.uniform(0.94, 1.06))
    start_s = rng.uniform(0.0, 0.12)
    onsets, slot_ends, on_beat = _rhythm(rng, attributes["density"], beat_s, start_s, duration)
    offs = onsets + rng.uniform(0.6, 0.95) * (slot_ends - onsets)  # legato to staccato
    root = _LOWEST_ROOT[attributes["register"]] + rng.integers(0, 6)
    pitches = _melody(rng, root, attributes["mode"], len(onsets))
    gains = np.where(on_beat, 1.0, 0.8) * rng.uniform(0.85, 1.0, len(onsets))
    chord = root + np.asarray(_CHORDS[attributes["mode"]])
    bars = start_s + np.arange(0.0, duration - start_s, 4 * beat_s)
    onsets = np.concatenate([onsets, np.repeat(bars, len(chord))])
    offs = np.concatenate([offs, np.repeat(bars + 2 * beat_s, len(chord))])  # a half-note chord on each downbeat
    pitches = np.concatenate([pitches, np.tile(chord, len(bars))])
    gains = np.concatenate([gains, np.full(len(bars) * len(chord), _CHORD_GAIN)])
    cents = rng.uniform(-15.0, 15.0) + rng.uniform(-3.0, 3.0, len(onsets))  # tuning of the clip, then of each note
    freqs = 440.0 * 2.0 ** ((pitches - 69 + cents / 100.0) / 12.0)
    music = _render_notes(attributes["timbre"], onsets, offs, freqs, gains, sr, n)
    mix = music / np.abs(music).max() + _render_ticks(rng, start_s + np.arange(0.0, duration - start_s, beat_s), sr, n)
    # Dynamics are applied after normalising, so "soft" and "loud" are absolute levels, not relative ones.
    first, last = (float(np.log(g * rng.uniform(0.85, 1.1))) for g in _DYNAMICS[attributes["dynamics"]])
    gain = np.exp(np.linspace(first, last, n, dtype=np.float32)) / np.abs(mix).max()
    # Uniform rather than Gaussian noise: as white, and 6x cheaper to draw, a noticeable share of the clip's cost.
    noise = rng.uniform(0.0035, 0.0105) * (rng.random(n, dtype=np.float32) - 0.5)
    return np.clip(mix * gain + noise, -1.0, 1.0, dtype=np.float32)


def describe(rng: np.random.Generator, attributes: dict[str, str], cfg: WorldConfig) -> tuple[tuple[str, ...], str]:
    """A random partial description of ``attributes``: ``(described names in ATTRIBUTES order, prompt)``."""
    n_described = rng.integers(cfg.min_described, cfg.max_described + 1)
    chosen = set(rng.choice(list(ATTRIBUTES), size=n_described, replace=False).tolist())
    described = tuple(name for name in ATTRIBUTES if name in chosen)
    return described, make_prompt(rng, attributes, described)


def recaption(clip: Clip, n: int, cfg: WorldConfig) -> list[Clip]:
    """``clip`` plus ``n - 1`` copies with other partial prompts of the same audio (caption augmentation).

    One caption per clip teaches a text-conditioned model slowly: each prompt word is seen with few clips. Real
    captioned corpora have the same remedy (several captions per clip). Copy ``j`` draws from
    ``default_rng([cfg.seed, clip_id, j])``, so the captions do not depend on how the corpus is sharded.
    """
    out = [clip]
    for j in range(1, n):
        described, prompt = describe(np.random.default_rng([cfg.seed, clip.clip_id, j]), clip.attributes, cfg)
        out.append(Clip(clip.clip_id, prompt, clip.attributes, described, clip.audio))
    return out


def generate_clip(rng: np.random.Generator, clip_id: int, cfg: WorldConfig) -> Clip:
    """Draw attributes uniformly, a random subset of them to describe, the prompt, then the audio."""
    attributes = {name: values[rng.integers(len(values))] for name, values in ATTRIBUTES.items()}
    described, prompt = describe(rng, attributes, cfg)
    return Clip(clip_id, prompt, attributes, described, synthesize(rng, attributes, cfg))


def generate_corpus(cfg: WorldConfig, start: int = 0, count: int | None = None) -> list[Clip]:
    """Clips ``start .. start+count-1`` of the corpus (``count`` None: up to ``cfg.n_clips``).

    Clip ``i`` draws from ``np.random.default_rng([cfg.seed, i])``, so it is the same whatever shard it is made in.
    """
    count = cfg.n_clips - start if count is None else count
    if start < 0 or count < 0 or start + count > cfg.n_clips:
        raise ValueError(f"generate_corpus: clips {start}..{start + count - 1} are outside the corpus "
                         f"0..{cfg.n_clips - 1} (n_clips={cfg.n_clips})")
    return [generate_clip(np.random.default_rng([cfg.seed, i]), i, cfg) for i in range(start, start + count)]


# ---- Parquet --------------------------------------------------------------------------------------------------------

def _attr_column(name: str) -> str:
    return f"attr_{name}"


def clips_to_table(clips: list[Clip], include_audio: bool = True) -> pa.Table:
    """One row per clip: clip_id int64, prompt string, described list<string>, attr_<name> string per attribute and,
    when ``include_audio``, audio list<float32>."""
    columns = {
        "clip_id": pa.array([c.clip_id for c in clips], pa.int64()),
        "prompt": pa.array([c.prompt for c in clips], pa.string()),
        "described": pa.array([list(c.described) for c in clips], pa.list_(pa.string())),
    }
    for name in ATTRIBUTES:
        columns[_attr_column(name)] = pa.array([c.attributes[name] for c in clips], pa.string())
    if include_audio:
        audios = [np.asarray(c.audio, dtype=np.float32) for c in clips]
        bad = [c.clip_id for c, a in zip(clips, audios) if a.ndim != 1]
        if bad:
            raise ValueError(f"clips_to_table: audio must be 1-D [n_samples]; clip(s) {bad[:5]} are not")
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in audios], dtype=np.int64)])
        if offsets[-1] > np.iinfo(np.int32).max:
            raise ValueError(f"clips_to_table: {offsets[-1]} audio samples overflow one list<float32> column; "
                             f"write the corpus in shards (generate_corpus start/count)")
        values = np.concatenate([np.zeros(0, np.float32), *audios])
        columns["audio"] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
    return pa.table(columns)


def write_corpus(path: str | os.PathLike, clips: list[Clip], include_audio: bool = True) -> None:
    """Write ``clips`` as Parquet (see clips_to_table). Readers never see a partial file: it is written next to
    ``path`` and renamed over it."""
    path = os.fspath(path)
    table = clips_to_table(clips, include_audio)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_corpus(path: str | os.PathLike) -> list[Clip]:
    """The clips of a file written by write_corpus. Without an audio column each clip's audio is float32 ``[0]``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"corpus file not found: {path}")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"corpus file {path} is not a readable Parquet file: {e}") from e
    required = ["clip_id", "prompt", "described", *(_attr_column(name) for name in ATTRIBUTES)]
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise ValueError(f"corpus file {path} has no column(s) {missing} (columns: {table.column_names})")
    for name in required:
        if table.column(name).null_count:
            raise ValueError(f"corpus file {path}: column {name!r} holds nulls")
    columns = {name: table.column(name).to_pylist() for name in required}
    for name, values in ATTRIBUTES.items():
        bad = sorted(set(columns[_attr_column(name)]) - set(values))
        if bad:
            raise ValueError(f"corpus file {path}: column {_attr_column(name)!r} holds unknown value(s) {bad}; "
                             f"known: {values}")
    bad = sorted({name for described in columns["described"] for name in described} - ATTRIBUTES.keys())
    if bad:
        raise ValueError(f"corpus file {path}: column 'described' names unknown attribute(s) {bad}")
    n = table.num_rows
    if "audio" in table.column_names:
        audio = table.column("audio").combine_chunks()
        if not (pa.types.is_list(audio.type) or pa.types.is_large_list(audio.type)) or audio.null_count:
            raise ValueError(f"corpus file {path}: column 'audio' must be a list<float32> without nulls, "
                             f"got {audio.type} with {audio.null_count} null(s)")
        offsets = audio.offsets.to_numpy()
        # One writable copy: Arrow's buffers are read-only, and callers may process clips in place.
        values = np.array(audio.values.to_numpy(zero_copy_only=False), dtype=np.float32)
        audios = [values[offsets[i]:offsets[i + 1]] for i in range(n)]
    else:
        audios = [np.zeros(0, np.float32) for _ in range(n)]
    return [Clip(clip_id=columns["clip_id"][i], prompt=columns["prompt"][i],
                 attributes={name: columns[_attr_column(name)][i] for name in ATTRIBUTES},
                 described=tuple(columns["described"][i]), audio=audios[i]) for i in range(n)]


def corpus_audio(wcfg, start: int, count: int) -> tuple[np.ndarray, list]:
    """Clips ``start .. start + count`` of the procedural corpus: their audio ``[count, N]`` float32 and the clips."""
    clips = generate_corpus(wcfg, start=start, count=count)
    return np.stack([c.audio for c in clips]).astype(np.float32), clips
