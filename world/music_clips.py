"""Clips of the real-music world: excerpts of parsed works, rendered, labelled and captioned; and the source that
``divcfg world build --kind music`` takes its corpus, captions and labels from.

Clip ``i`` draws its rendering (instrument family, tempo, target register, excerpt start) from
``default_rng([seed, i])``, so clips can be rendered in any order by any process.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from divcfg.codec.offline import load_codec
from divcfg.common.data.tokens import read_tokens
from divcfg.reward.intervals import bootstrap_indices, ratio_interval, ratios_by_group
from divcfg.reward.pitch_judge import PitchJudgeConfig, judge_hits, load_pitch_judge, save_pitch_judge_config
from divcfg.reward.scorer import attributes_above_chance
from divcfg.world.music_captions import (
    DENSITY_BOUNDS,
    REGISTER_BOUNDS,
    TEMPO_BPM,
    attribute_table,
    caption_schema,
    density_of,
    describe,
    meter_of,
    mode_of,
    register_of,
    texture_of,
)
from divcfg.world.music_corpus import (
    DEFAULT_COLLECTIONS,
    MusicConfig,
    WorkSet,
    load_works,
    require_music21,
    split_works,
    styles_of,
)
from divcfg.world.music_render import FAMILY_PROGRAMS, Note, Renderer, check_soundfont, default_soundfont
from divcfg.world.procedural import Clip

_TRANSPOSE = (0, -12, 12, -24, 24)  # octave transpositions, preferred in this order
_PITCH_RANGE = (28, 103)            # every note stays on a GM instrument's playable range


def excerpt(work: dict, start_ql: float, bpm: float, duration_s: float) -> list[tuple[float, float, int, int]]:
    """Notes ``(onset s, offset s, pitch, voice)`` of ``work`` that start within ``duration_s`` of ``start_ql``,
    played at ``bpm`` quarters per minute; notes still sounding at the end are cut there."""
    spq = 60.0 / bpm
    out = []
    for onset, dur, pitch, voice in work["notes"]:
        t = (onset - start_ql) * spq
        if 0 <= t < duration_s:
            out.append((t, min(duration_s, t + dur * spq), int(pitch), int(voice)))
    return sorted(out)


def _start(work: dict, rng: np.random.Generator, span_ql: float) -> float:
    """An excerpt start on a beat (an integral quarter) where a note begins, leaving ``span_ql`` of music if it can."""
    onsets = sorted({n[0] for n in work["notes"]})
    end = max(n[0] + n[1] for n in work["notes"])
    starts = [t for t in onsets if t == int(t) and t + span_ql <= end] or onsets[:1]
    return float(starts[rng.integers(len(starts))])


def _max_voices(notes: list[tuple[float, float, int, int]]) -> int:
    """Most notes sounding at once (a 10 ms tolerance: a note ending as the next starts is not a chord)."""
    edges = sorted([(t, 1) for t, _, _, _ in notes] + [(off - 0.01, -1) for _, off, _, _ in notes])
    count = best = 0
    for _, d in edges:
        count += d
        best = max(best, count)
    return best


def make_clip(work: dict, clip_id: int, cfg: MusicConfig, renderer: Renderer, families: tuple[str, ...],
              n_captions: int) -> tuple[list[Clip], dict]:
    """``n_captions`` clips sharing one rendering of an excerpt of ``work`` (different captions), and its facts."""
    table = attribute_table(styles_of(list(cfg.collections)))
    rng = np.random.default_rng([cfg.seed, clip_id])
    family = families[rng.integers(len(families))]
    tempo = ("slow", "moderate", "fast")[rng.integers(3)]
    bpm = float(rng.uniform(*TEMPO_BPM[tempo]))
    target = ("low", "middle", "high")[rng.integers(3)]
    notes = excerpt(work, _start(work, rng, cfg.duration_s * bpm / 60.0), bpm, cfg.duration_s)
    median = float(np.median([p for _, _, p, _ in notes]))
    lo, hi = min(p for _, _, p, _ in notes), max(p for _, _, p, _ in notes)
    fits = [t for t in _TRANSPOSE if _PITCH_RANGE[0] <= lo + t and hi + t <= _PITCH_RANGE[1]] or [0]
    shift = next((t for t in fits if register_of(median + t) == target), fits[0])
    onsets = sorted({round(t, 2) for t, _, _, _ in notes})
    groups = 1 + int((np.diff(onsets) > 0.05).sum())  # onsets within 50 ms are one event, as the judge counts them
    attributes = {"style": work["style"], "mode": mode_of(work["key_mode"], work["key_confidence"], 0.0),
                  "meter": meter_of(work["time_signature"]), "instrument": family, "tempo": tempo,
                  "register": register_of(median + shift), "texture": texture_of(_max_voices(notes)),
                  "density": density_of(groups / cfg.duration_s)}
    audio = renderer.render([Note(t, off, p + shift, v) for t, off, p, v in notes], family, cfg.duration_s)
    clips = []
    for j in range(n_captions):
        cap_rng = np.random.default_rng([cfg.seed, clip_id, j, 7])
        described, prompt = describe(cap_rng, attributes, table)
        clips.append(Clip(clip_id, prompt, dict(attributes), described, audio))
    return clips, {"work": work["id"], "collection": work["collection"], "shift": shift, "bpm": round(bpm, 1)}


_RENDERER: Renderer | None = None


def _render_batch(args) -> list[tuple[list[Clip], dict]]:
    global _RENDERER
    works, ids, cfg, n_captions = args
    if _RENDERER is None or _RENDERER.soundfont != (cfg.soundfont or default_soundfont()):
        _RENDERER = Renderer(cfg.soundfont, cfg.sample_rate)
    return [make_clip(w, i, cfg, _RENDERER, tuple(FAMILY_PROGRAMS), n_captions) for w, i in zip(works, ids)]


def plan_clips(workset: WorkSet, n_clips: int, n_heldout: int, seed: int) -> tuple[list[dict], int]:
    """Work of each clip, training clips first, and the number of training clips. Held-out clips come only from
    held-out works; each work gives about the same number of excerpts."""
    per_work = max(1, n_clips // len(workset.works))
    train, heldout = split_works(workset.works, -(-n_heldout // per_work), seed)
    n_train = n_clips - n_heldout
    return ([train[i % len(train)] for i in range(n_train)] + [heldout[i % len(heldout)] for i in range(n_heldout)],
            n_train)


# Distinct works per size: tiny 65 works x 4 excerpts = 260 clips; small 3,200 works x 3 excerpts = 9,600 clips.
WORKS_PER_SIZE = {"tiny": 65, "small": 3200}
HELDOUT_AUDIO = "heldout_rendered.npy"


class MusicSource:
    """The real-music world for world/build.py: it stands in for the procedural world's corpus functions
    (``corpus_audio``, ``recaption``, ``write_corpus``, ``labels``, ``attributes``) and adds the corpus figures and
    the independent judge's ceiling to world.json."""

    kind = "music"

    def __init__(self, cfg: MusicConfig, world_dir: str | os.PathLike, n_heldout: int, n_captions: int,
                 progress: bool = False):

        require_music21()  # before any work, with how to install it
        check_soundfont(cfg.soundfont or default_soundfont())
        self.cfg, self.world_dir, self.n_heldout, self.n_captions = cfg, os.fspath(world_dir), n_heldout, n_captions
        self.progress = progress
        self.attributes = attribute_table(styles_of(list(cfg.collections)))
        self.schema = caption_schema(styles_of(list(cfg.collections)))
        self.facts: dict = {}
        self._captions: dict[int, list[Clip]] = {}

    def labels(self, attributes: dict[str, str]) -> np.ndarray:
        return self.schema.labels(attributes)

    def corpus_audio(self, wcfg, start: int, count: int) -> tuple[np.ndarray, list[Clip]]:
        """``(audio [count, S] float32, clips)`` of the whole corpus (``start`` must be 0: works split the corpus,
        so it is made in one piece), training clips first; each clip holds its first caption."""
        if start != 0 or count != wcfg.n_clips:
            raise ValueError(f"the music corpus is made whole: start=0, count={wcfg.n_clips}; got {start}, {count}")
        works = load_works(self.cfg, self.world_dir, self.progress)
        plan, n_train = plan_clips(works, count, self.n_heldout, self.cfg.seed)
        workers = self.cfg.workers or os.cpu_count() or 1
        chunks = [(plan[i: i + 32], list(range(i, min(count, i + 32))), self.cfg, self.n_captions)
                  for i in range(0, count, 32)]
        results = []
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for part in pool.map(_render_batch, chunks):
                results.extend(part)
        self._captions = {r[0][0].clip_id: r[0] for r in results}
        self.facts = _figures(works, results, n_train, self.attributes)
        return np.stack([r[0][0].audio for r in results]).astype(np.float32), [r[0][0] for r in results]

    def recaption(self, clip: Clip, n: int, wcfg=None) -> list[Clip]:
        """The clip under its ``n`` captions (the first is its own)."""
        if n > self.n_captions:
            raise ValueError(f"recaption: {n} captions asked, the corpus made {self.n_captions}")
        return self._captions[clip.clip_id][:n]

    def write_corpus(self, path: str | os.PathLike, clips: list[Clip], include_audio: bool = False) -> None:
        """corpus.parquet (one row per clip: work, collection, split, prompt, attributes), the caption schema and
        the independent judge's thresholds for the judges, and the held-out clips as rendered (the judge's
        ceiling is measured on them)."""

        facts, n_train = self.facts["clips"], len(clips) - self.n_heldout
        table = pa.table({"clip_id": [c.clip_id for c in clips], "prompt": [c.prompt for c in clips],
                          "described": [list(c.described) for c in clips],
                          "work": [f["work"] for f in facts], "collection": [f["collection"] for f in facts],
                          "heldout": [i >= n_train for i in range(len(clips))],
                          **{f"attr_{a}": [c.attributes[a] for c in clips] for a in self.attributes}})
        pq.write_table(table, os.fspath(path))
        self.schema.save(self.world_dir)
        save_pitch_judge_config(PitchJudgeConfig(REGISTER_BOUNDS, DENSITY_BOUNDS), self.world_dir)
        np.save(os.path.join(self.world_dir, HELDOUT_AUDIO), np.stack([c.audio for c in clips[n_train:]]))

    def figures(self) -> dict:
        """world.json's corpus figures (empty on a resumed build that did not remake the corpus)."""
        return {k: v for k, v in self.facts.items() if k != "clips"}

    def keep_scored(self, accuracy: dict[str, float], heldout_labels: np.ndarray) -> dict:
        """Keep, for the trained scorer's adherence, only the attributes it reads from decoded held-out audio well
        above chance (reward/scorer.py: ``attributes_above_chance``); the others stay in the captions (the base
        model reads them) but no longer count. Saved in captions.json; returns world.json's figures."""


        kept, report = attributes_above_chance(accuracy, heldout_labels, self.attributes)
        # A scorer that reads nothing above chance (a tiny world's can) can't choose: adherence then counts all.
        note = {} if kept else {"note": "no attribute above chance: all of them count"}
        kept = kept or list(self.attributes)
        self.schema = replace(self.schema, scored=tuple(kept))
        self.schema.save(self.world_dir)
        return {"kept": kept, "dropped": [a for a in self.attributes if a not in kept], "by_attribute": report,
                "rule": "held-out round-trip accuracy >= chance (most common value) + 3 binomial SE", **note}

    def measure_judge(self, world_dir: str | os.PathLike, bootstrap: int = 1000) -> dict:
        """The independent judge's accuracy per attribute on the held-out clips, as rendered and after the codec's
        round trip: its ceiling, and what the codec's decoding costs it. ``ratio``: round trip over rendered per
        attribute, with a 95% paired bootstrap interval over the clips (``bootstrap`` rounds)."""


        judge = load_pitch_judge(world_dir)
        heldout = read_tokens(os.path.join(os.fspath(world_dir), "heldout.parquet"))
        truth = [{a: heldout.columns[f"attr_{a}"][i] for a in self.attributes} for i in range(len(heldout.prompts))]
        codec = load_codec(os.path.join(os.fspath(world_dir), "codec"))
        with torch.inference_mode():
            decoded = codec.decode(torch.as_tensor(np.asarray(heldout.codes), dtype=torch.long)).numpy()
        rendered = np.load(os.path.join(os.fspath(world_dir), HELDOUT_AUDIO))
        ceiling = judge_hits(judge, rendered, self.cfg.sample_rate, truth)
        after = judge_hits(judge, decoded, codec.sample_rate, truth)
        judged = [a for a in ceiling if ceiling[a].size >= 2]
        ratio = {a: ratio_interval(after[a], ceiling[a], bootstrap_indices(ceiling[a].size, bootstrap)) for a in judged}
        # Per collection too: one collection's polyphony can fail while the whole passes (RESULTS.md "The judge on
        # fresh works, and per collection").
        by = ratios_by_group({a: after[a] for a in judged}, {a: ceiling[a] for a in judged},
                             heldout_collections(world_dir), bootstrap)
        return {"clips": len(truth), "rendered": {a: float(ceiling[a].mean()) for a in judged},
                "round_trip": {a: float(after[a].mean()) for a in judged}, "ratio": ratio,
                "by_collection": {c: v for c, v in by.items() if c != "all"}}


def heldout_collections(world_dir: str | os.PathLike) -> list[str]:
    """The collection of each held-out clip of a built music world, in the held-out clips' order."""
    corpus = pq.read_table(os.path.join(os.fspath(world_dir), "corpus.parquet"),
                           columns=["collection", "heldout"]).to_pydict()
    return [c for c, h in zip(corpus["collection"], corpus["heldout"]) if h]


def music_source(size: str, p: dict, seed: int, world_dir: str | os.PathLike, soundfont: str | None = None,
                 collections: tuple[str, ...] | None = None, workers: int = 0, progress: bool = False) -> MusicSource:
    """The music world's source for a build of ``size`` with size parameters ``p``."""
    if size not in WORKS_PER_SIZE:
        raise ValueError(f"no music world of size {size!r}; known: {', '.join(WORKS_PER_SIZE)}")
    cfg = MusicConfig(collections=tuple(collections or DEFAULT_COLLECTIONS), n_works=WORKS_PER_SIZE[size],
                      soundfont=soundfont, duration_s=p["duration_s"], seed=seed, workers=workers)
    return MusicSource(cfg, world_dir, p["n_heldout"], p["captions_per_clip"], progress)


def _figures(works: WorkSet, results: list, n_train: int, table: dict) -> dict:
    """Corpus figures for world.json: works and clips per collection, counts per attribute value, skipped works."""
    facts = [r[1] for r in results]
    clips = [r[0][0] for r in results]
    per = {}
    for c in sorted({f["collection"] for f in facts}):
        per[c] = {"works": len({f["work"] for f in facts if f["collection"] == c}),
                  "clips": sum(f["collection"] == c for f in facts)}
    counts = {a: {v: sum(c.attributes[a] == v for c in clips) for v in vals} for a, vals in table.items()}
    train_works = {f["work"] for f in facts[:n_train]}
    held_works = {f["work"] for f in facts[n_train:]}
    return {"clips": facts, "collections": per, "attribute_counts": counts, "skipped_works": works.skipped,
            "works": len(train_works | held_works), "heldout_works": len(held_works),
            "heldout_works_in_training": len(train_works & held_works), "parsed_this_run": works.parsed}
