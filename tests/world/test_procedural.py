"""The procedural text-to-music world: determinism, prompts, audibility of the attributes, Parquet round trip."""
from __future__ import annotations

import itertools
import os
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from divcfg.common.data.captions import ATTRIBUTES, PROMPT_MAX_BYTES, attribute_labels, make_prompt, parse_prompt
from divcfg.world.procedural import (
    Clip,
    WorldConfig,
    clips_to_table,
    generate_clip,
    generate_corpus,
    read_corpus,
    recaption,
    synthesize,
    write_corpus,
)

SR = 16000
# Short clips at a low rate keep the prompt tests fast; audio tests use the default rate.
FAST = WorldConfig(seed=3, n_clips=400, duration_s=2.0, sample_rate=8000)
AUDIO = WorldConfig(seed=0, duration_s=3.0, sample_rate=SR)


@pytest.fixture(scope="module")
def corpus() -> list[Clip]:
    return generate_corpus(FAST)


def random_attributes(rng: np.random.Generator, **fixed: str) -> dict[str, str]:
    attributes = {name: values[rng.integers(len(values))] for name, values in ATTRIBUTES.items()}
    attributes.update(fixed)
    return attributes


def clips_with(seed: int, count: int, **fixed: str) -> list[np.ndarray]:
    """``count`` clips [n] with the ``fixed`` attributes and random others."""
    rng = np.random.default_rng(seed)
    return [synthesize(rng, random_attributes(rng, **fixed), AUDIO) for _ in range(count)]


def onset_rate(audio: np.ndarray) -> float:
    """Onsets per second of ``audio [n]``: peaks of the positive spectral flux below 4 kHz, in 40 ms frames 10 ms
    apart."""
    hop = SR // 100
    frames = np.lib.stride_tricks.sliding_window_view(audio, 4 * hop)[::hop] * np.hanning(4 * hop)
    log_mag = np.log1p(100 * np.abs(np.fft.rfft(frames, axis=1))[:, : 4000 * 4 * hop // SR])
    flux = np.maximum(np.diff(log_mag, axis=0), 0).mean(axis=1)
    peak = (flux[1:-1] > flux[:-2]) & (flux[1:-1] >= flux[2:]) & (flux[1:-1] > np.median(flux) + 0.5 * flux.std())
    return peak.sum() / (len(audio) / SR)


def dominant_hz(audio: np.ndarray) -> float:
    power = np.abs(np.fft.rfft(audio)) ** 2
    return float(np.fft.rfftfreq(len(audio), 1 / SR)[np.argmax(power)])


def overtone_share(audio: np.ndarray) -> float:
    """Share of the power below 4 kHz that lies above 2.1x the dominant frequency (most of the ticks' power is higher).

    Every note lies within an octave above the root, and the dominant frequency is at least the root's, so the power
    up there is overtones."""
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    below = freqs < 4000
    return float(power[below & (freqs > 2.1 * freqs[np.argmax(power)])].sum() / power[below].sum())


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


# ---- config and determinism -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(n_clips=-1), dict(duration_s=0.1), dict(sample_rate=2000),
                                 dict(min_described=2, max_described=1), dict(max_described=7),
                                 dict(min_described=-1)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="WorldConfig"):
        WorldConfig(**bad)


def test_same_seed_same_bytes_other_seed_differs():
    cfg = WorldConfig(seed=11, n_clips=4, duration_s=2.0, sample_rate=8000)
    first, again = generate_corpus(cfg), generate_corpus(cfg)
    other = generate_corpus(WorldConfig(seed=12, n_clips=4, duration_s=2.0, sample_rate=8000))
    assert first == again
    assert [a.audio.tobytes() for a in first] == [b.audio.tobytes() for b in again]
    assert all(a.audio.tobytes() != c.audio.tobytes() for a, c in zip(first, other))


def test_clip_is_the_same_alone_or_in_a_batch():
    cfg = WorldConfig(seed=5, n_clips=10, duration_s=2.0, sample_rate=8000)
    batch = generate_corpus(cfg, start=2, count=6)
    alone = generate_corpus(cfg, start=5, count=1)[0]
    direct = generate_clip(np.random.default_rng([cfg.seed, 5]), 5, cfg)
    assert [c.clip_id for c in batch] == list(range(2, 8))
    assert alone == batch[3] and direct == batch[3] and alone.clip_id == 5
    assert alone.audio.tobytes() == batch[3].audio.tobytes()
    assert len(generate_corpus(cfg, start=7)) == 3


def test_clip_equality_compares_audio():
    clip = generate_corpus(WorldConfig(n_clips=1, duration_s=2.0, sample_rate=8000))[0]
    same = Clip(clip.clip_id, clip.prompt, dict(clip.attributes), clip.described, clip.audio.copy())
    assert clip == same
    same.audio[100] += 0.25
    assert clip != same
    assert clip != Clip(clip.clip_id, clip.prompt + "!", clip.attributes, clip.described, clip.audio)


@pytest.mark.parametrize("start,count", [(-1, 2), (8, 3), (0, -1)])
def test_generate_corpus_rejects_ranges_outside_the_corpus(start, count):
    with pytest.raises(ValueError, match="outside the corpus"):
        generate_corpus(WorldConfig(n_clips=10), start=start, count=count)


# ---- prompts --------------------------------------------------------------------------------------------------------

def test_prompts_agree_with_attributes(corpus):
    for clip in corpus:
        assert parse_prompt(clip.prompt) == {name: clip.attributes[name] for name in clip.described}, clip.prompt
        assert FAST.min_described <= len(clip.described) <= FAST.max_described
        assert clip.described == tuple(name for name in ATTRIBUTES if name in clip.described)
        assert list(clip.attributes) == list(ATTRIBUTES)
        assert all(clip.attributes[name] in values for name, values in ATTRIBUTES.items())


def test_prompts_are_short_ascii(corpus):
    for clip in corpus:
        assert clip.prompt.isascii() and len(clip.prompt.encode("utf-8")) <= PROMPT_MAX_BYTES, clip.prompt


def test_every_value_in_every_phrasing_round_trips():
    # All six described forces the shortening path; every combination of values must fit and parse back.
    rng = np.random.default_rng(0)
    for combo in itertools.product(*ATTRIBUTES.values()):
        attributes = dict(zip(ATTRIBUTES, combo))
        prompt = make_prompt(rng, attributes, tuple(ATTRIBUTES))
        assert prompt.isascii() and len(prompt.encode("utf-8")) <= PROMPT_MAX_BYTES, prompt
        assert parse_prompt(prompt) == attributes, prompt
    # One attribute at a time, with enough draws to see both its adjective and its trailing phrase.
    for name, values in ATTRIBUTES.items():
        for value in values:
            texts = {make_prompt(rng, {name: value}, (name,)) for _ in range(40)}
            assert len(texts) >= 4
            assert all(parse_prompt(t) == {name: value} for t in texts), texts


def test_prompt_with_nothing_described_parses_empty():
    prompt = make_prompt(np.random.default_rng(0), {}, ())
    assert prompt.startswith("a ") and parse_prompt(prompt) == {}


def test_parse_prompt_is_case_insensitive_and_rejects_conflicts():
    assert parse_prompt("A FAST Organ tune In A Minor Key") == {"timbre": "organ", "tempo": "fast", "mode": "minor"}
    assert parse_prompt("a slow tune") == {"tempo": "slow"}  # "low" inside "slow" is not a register
    with pytest.raises(ValueError, match="tempo"):
        parse_prompt("a slow tune at a fast tempo")


def test_make_prompt_rejects_unknown_attributes_and_values():
    with pytest.raises(ValueError, match="colour"):
        make_prompt(np.random.default_rng(0), {"colour": "red"}, ("colour",))
    with pytest.raises(ValueError, match="presto"):
        make_prompt(np.random.default_rng(0), {"tempo": "presto"}, ("tempo",))
    with pytest.raises(ValueError, match="mode=None"):
        make_prompt(np.random.default_rng(0), {"tempo": "fast"}, ("mode",))


def test_same_prompt_covers_clips_that_differ(corpus):
    by_prompt: dict[str, list[Clip]] = defaultdict(list)
    for clip in corpus:
        by_prompt[clip.prompt].append(clip)
    multi_modal = 0
    for prompt, clips in by_prompt.items():
        free = [name for name in ATTRIBUTES if name not in clips[0].described]
        if len({tuple(c.attributes[n] for n in free) for c in clips}) > 1:
            multi_modal += 1
    assert multi_modal >= 10


def test_attributes_are_drawn_uniformly_enough(corpus):
    for name, values in ATTRIBUTES.items():
        counts = np.array([sum(c.attributes[name] == v for c in corpus) for v in values])
        assert counts.min() > 0.5 * len(corpus) / len(values), (name, counts)


def test_attribute_labels():
    attributes = {"timbre": "bell", "tempo": "slow", "register": "high", "mode": "whole-tone", "density": "medium",
                  "dynamics": "decrescendo"}
    labels = attribute_labels(attributes)
    assert labels.dtype == np.int64
    assert labels.tolist() == [ATTRIBUTES[n].index(v) for n, v in attributes.items()] == [5, 0, 2, 3, 1, 3]
    with pytest.raises(ValueError, match="tempo"):
        attribute_labels({**attributes, "tempo": "presto"})
    with pytest.raises(ValueError, match="dynamics"):
        attribute_labels({k: v for k, v in attributes.items() if k != "dynamics"})


# ---- audio ----------------------------------------------------------------------------------------------------------

def test_audio_is_finite_bounded_and_not_silent(corpus):
    for clip in corpus[:100]:
        assert clip.audio.dtype == np.float32 and clip.audio.shape == (int(FAST.duration_s * FAST.sample_rate),)
        assert np.isfinite(clip.audio).all() and np.abs(clip.audio).max() <= 1.0
        assert rms(clip.audio) > 0.005


def test_clips_with_the_same_attributes_differ():
    a, b = clips_with(0, 2, timbre="organ", tempo="slow", register="low", mode="major", density="sparse",
                      dynamics="soft")
    assert np.abs(a - b).max() > 0.05


def test_register_sets_the_pitch():
    bands = {"low": (60, 185), "middle": (185, 560), "high": (560, 1700)}
    medians = {}
    for register, (lo, hi) in bands.items():
        sine = [dominant_hz(a) for a in clips_with(1, 6, register=register, timbre="sine")]
        assert all(lo <= f <= hi for f in sine), (register, sine)
        medians[register] = np.median([dominant_hz(a) for a in clips_with(2, 8, register=register)])
    assert medians["low"] < medians["middle"] < medians["high"], medians


def test_tempo_sets_the_onset_rate():
    rates = {t: np.mean([onset_rate(a) for a in clips_with(3, 8, tempo=t, density="medium", dynamics="loud")])
             for t in ATTRIBUTES["tempo"]}
    assert rates["slow"] < rates["moderate"] < rates["fast"] and 1.5 * rates["slow"] < rates["fast"], rates


def test_density_sets_the_onset_rate():
    rates = {d: np.mean([onset_rate(a) for a in clips_with(4, 8, density=d, tempo="moderate", dynamics="loud")])
             for d in ATTRIBUTES["density"]}
    assert rates["sparse"] < rates["medium"] < rates["dense"] and 1.5 * rates["sparse"] < rates["dense"], rates


def test_dynamics_set_the_level_and_its_direction():
    second = SR
    level = {d: (np.mean([rms(a[:second]) for a in clips]), np.mean([rms(a[-second:]) for a in clips]))
             for d in ATTRIBUTES["dynamics"] for clips in [clips_with(5, 6, dynamics=d)]}
    assert sum(level["loud"]) > 3 * sum(level["soft"]), level
    assert level["crescendo"][1] > 2.5 * level["crescendo"][0], level
    assert level["decrescendo"][0] > 2.5 * level["decrescendo"][1], level


def test_timbre_sets_the_overtones():
    share = {t: np.mean([overtone_share(a) for a in clips_with(6, 6, timbre=t, dynamics="loud")])
             for t in ("sine", "square", "sawtooth")}
    assert 3 * share["sine"] < share["square"] < share["sawtooth"], share


def test_synthesize_rejects_unknown_values():
    with pytest.raises(ValueError, match="timbre"):
        synthesize(np.random.default_rng(0), {**random_attributes(np.random.default_rng(0)), "timbre": "kazoo"}, AUDIO)


# ---- Parquet --------------------------------------------------------------------------------------------------------

def test_parquet_round_trip_is_exact(tmp_path, corpus):
    clips = corpus[:20]
    path = tmp_path / "sub" / "world.parquet"
    write_corpus(path, clips)
    assert os.listdir(path.parent) == ["world.parquet"]  # no temporary file left behind
    back = read_corpus(path)
    assert back == clips
    for a, b in zip(clips, back):
        assert (a.clip_id, a.prompt, a.attributes, a.described) == (b.clip_id, b.prompt, b.attributes, b.described)
        assert b.audio.dtype == np.float32 and a.audio.tobytes() == b.audio.tobytes()
    back[0].audio[0] = 0.5  # read audio is the caller's to edit


def test_table_schema(corpus):
    table = clips_to_table(corpus[:3])
    expected = ["clip_id", "prompt", "described", *(f"attr_{n}" for n in ATTRIBUTES), "audio"]
    assert table.column_names == expected
    assert str(table.schema.field("clip_id").type) == "int64"
    assert str(table.schema.field("described").type) == "list<item: string>"
    assert str(table.schema.field("audio").type) == "list<item: float>"
    assert "audio" not in clips_to_table(corpus[:3], include_audio=False).column_names
    assert clips_to_table([]).num_rows == 0


def test_corpus_without_audio_reads_back_empty_audio(tmp_path, corpus):
    path = tmp_path / "meta.parquet"
    write_corpus(path, corpus[:5], include_audio=False)
    back = read_corpus(path)
    assert [c.prompt for c in back] == [c.prompt for c in corpus[:5]]
    assert all(c.audio.shape == (0,) and c.audio.dtype == np.float32 for c in back)


def test_read_corpus_names_the_missing_column(tmp_path, corpus):
    path = tmp_path / "broken.parquet"
    pq.write_table(clips_to_table(corpus[:3]).drop_columns(["attr_mode"]), path)
    with pytest.raises(ValueError, match=r"broken\.parquet.*attr_mode"):
        read_corpus(path)


def test_read_corpus_rejects_unknown_values_and_unreadable_files(tmp_path, corpus):
    table = clips_to_table(corpus[:2], include_audio=False)
    path = tmp_path / "odd.parquet"
    pq.write_table(table.set_column(table.column_names.index("attr_tempo"), "attr_tempo",
                                    [["slow", "presto"]]), path)
    with pytest.raises(ValueError, match="presto"):
        read_corpus(path)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="junk.parquet"):
        read_corpus(junk)
    with pytest.raises(FileNotFoundError):
        read_corpus(tmp_path / "absent.parquet")


def test_recaption_keeps_the_audio_and_describes_only_true_attributes(corpus):
    cfg = FAST
    for clip in corpus[:10]:
        copies = recaption(clip, 4, cfg)
        assert copies[0] is clip and len(copies) == 4
        for c in copies:
            assert c.clip_id == clip.clip_id and c.attributes == clip.attributes and c.audio is clip.audio
            assert parse_prompt(c.prompt) == {a: clip.attributes[a] for a in c.described}
        assert copies == recaption(clip, 4, cfg)  # seeded per clip and copy
    # The copies are new descriptions, not the original repeated.
    assert any(c.prompt != clip.prompt for clip in corpus[:10] for c in recaption(clip, 4, cfg)[1:])
