"""The real-music world's corpus: works from music21's bundled corpus, parsed in parallel and cached in the world
directory, split into training and held-out works, cut into excerpts and rendered with General MIDI instruments.

A work's record (``music_works.jsonl``, one JSON line per work, written as works finish) keeps its metadata, key
analysis, time signature and its notes (quarter-length onsets, durations, MIDI pitch, voice), so a re-run parses
nothing. A work that fails to parse, or whose key or meter can't be labelled, is skipped and counted.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from divcfg.world.music_captions import meter_of, mode_of

CACHE_FILE = "music_works.jsonl"
_MAX_QL = 96.0  # notes kept per work: the first 96 quarters (24 bars of 4/4) are more than any excerpt needs


@dataclass(frozen=True)
class Collection:
    """A named part of music21's corpus and the style its works get."""

    prefixes: tuple[str, ...]
    """Corpus paths that start with one of these belong to the collection."""
    style: str
    """Style value of its works (see music_captions.STYLES); Essen works get theirs from their region."""
    exclude: tuple[str, ...] = ()
    """Corpus paths under the prefixes that are not of the collection's style."""


COLLECTIONS: dict[str, Collection] = {
    # The chorales: not the roman-numeral analyses (bach/choraleAnalyses) nor the C major prelude (BWV 846).
    "bach": Collection(("bach/bwv",), "bach-chorale", exclude=("bach/bwv846.",)),
    "essen": Collection(("essenFolksong/",), "european-folk"),     # "chinese-folk" where the region is China
    "oneills": Collection(("oneills1850/",), "irish-dance"),
    "ryans": Collection(("ryansMammoth/",), "fiddle-tune"),
    "airds": Collection(("airdsAirs/",), "scottish-air"),
    "palestrina": Collection(("palestrina/",), "palestrina"),
    "monteverdi": Collection(("monteverdi/",), "madrigal"),
    "trecento": Collection(("trecento/",), "trecento"),
    "quartets": Collection(("haydn/", "mozart/", "beethoven/"), "quartet"),
}
DEFAULT_COLLECTIONS = ("bach", "essen", "oneills", "ryans", "airds")


def styles_of(collections: list[str]) -> list[str]:
    styles = []
    for name in collections:
        styles.append(COLLECTIONS[name].style)
        if name == "essen":
            styles.append("chinese-folk")
    return styles


@dataclass
class MusicConfig:
    """How the real-music corpus is chosen and rendered."""

    collections: tuple[str, ...] = DEFAULT_COLLECTIONS
    """music21 corpus collections to draw works from (names of COLLECTIONS)."""
    n_works: int = 65
    """Distinct works in the corpus (training plus held-out)."""
    min_key_confidence: float = 0.8
    """Key analyses less confident than this (music21's correlation coefficient) leave the work out."""
    soundfont: str | None = None
    """SF2 to render with; None: the one the install provides (pretty_midi's TimGM6mb.sf2)."""
    sample_rate: int = 16000
    """Audio sample rate in Hz."""
    duration_s: float = 2.0
    """Clip length in seconds."""
    seed: int = 0
    """Seed of the work selection, the split and each clip's rendering."""
    workers: int = 0
    """Processes that parse and render; 0: every core."""

    def __post_init__(self):
        unknown = [c for c in self.collections if c not in COLLECTIONS]
        if unknown:
            raise ValueError(f"unknown music collection(s) {unknown}; known: {', '.join(COLLECTIONS)}")
        if len(set(self.collections)) != len(self.collections) or not self.collections:
            raise ValueError(f"music collections must be distinct and non-empty, got {list(self.collections)}")


def require_music21():
    try:
        import music21  # noqa: F401
        from music21 import corpus
    except ImportError:
        raise ImportError("the music world needs music21 and its bundled corpus: run `make` (it installs the "
                          "`music` extra) or `pip install -e '.[music]'`") from None
    if not any(corpus.corpora.CoreCorpus().getPaths(fileExtensions=("mxl",))):
        raise ImportError("music21 is installed without its corpus; reinstall the wheel: pip install --force-reinstall "
                          "music21")


def candidate_works(collections: tuple[str, ...], seed: int) -> dict[str, list[dict]]:
    """Per collection, its works in a seeded random order: ``{"path", "number"}`` dicts from music21's metadata."""
    from music21 import corpus  # optional extra (divcfg[music])

    bundle = corpus.corpora.CoreCorpus().metadataBundle
    # The bundle's own iteration indexes a fresh list per item (quadratic in 15,000 works); read its entries directly.
    entries = bundle._metadataEntries.values() if hasattr(bundle, "_metadataEntries") else list(bundle)
    out: dict[str, list[dict]] = {c: [] for c in collections}
    for e in entries:
        path = str(e.sourcePath)
        for name in collections:
            if path.startswith(COLLECTIONS[name].prefixes) and not path.startswith(COLLECTIONS[name].exclude):
                out[name].append({"path": path, "number": e.number})
    rng = np.random.default_rng(seed)
    for name, works in out.items():
        works.sort(key=lambda w: (w["path"], str(w["number"])))
        out[name] = [works[i] for i in rng.permutation(len(works))]
    return out


def parse_work(collection: str, path: str, number) -> dict:
    """One work's record: metadata, key, time signature and notes; ``{"error": ...}`` if it fails to parse."""
    from music21 import corpus  # optional extra (divcfg[music])

    work_id = f"{path}#{number}" if number else path
    try:
        score = corpus.parse(path, number=number) if number else corpus.parse(path)
        key = score.analyze("key")
        ts = score.recurse().getElementsByClass("TimeSignature").first()
        md = score.metadata
        notes = []
        parts = list(score.parts) or [score]
        for voice, part in enumerate(parts):
            for n in part.stripTies().flatten().notes:
                onset = float(n.getOffsetInHierarchy(part))
                if onset >= _MAX_QL or n.duration.quarterLength <= 0:
                    continue
                for p in n.pitches:
                    notes.append([onset, float(n.duration.quarterLength), int(p.midi), voice])
        region = getattr(md, "localeOfComposition", None) if md else None
        style = COLLECTIONS[collection].style
        if collection == "essen" and region and "china" in region.lower():
            style = "chinese-folk"
        return {"id": work_id, "collection": collection, "style": style, "title": md.title if md else None,
                "composer": md.composer if md else None, "region": region,
                "time_signature": ts.ratioString if ts is not None else None,
                "key": f"{key.tonic.name} {key.mode}", "key_mode": key.mode,
                "key_confidence": round(float(key.correlationCoefficient), 4), "notes": notes}
    except Exception as e:  # a work music21 can't read is skipped and counted, whatever the reason
        return {"id": work_id, "collection": collection, "error": f"{type(e).__name__}: {e}"[:300]}


def _parse_star(args) -> dict:
    return parse_work(*args)


def usable(record: dict, min_key_confidence: float) -> str | None:
    """Why a parsed work can't be used (a count key for world.json), or None if it can."""
    if "error" in record:
        return "parse_failed"
    if not record["notes"]:
        return "no_notes"
    if mode_of(record["key_mode"], record["key_confidence"], min_key_confidence) is None:
        return "low_key_confidence"
    if meter_of(record["time_signature"]) is None:
        return "no_meter"
    return None


@dataclass
class WorkSet:
    """The works of one build: usable records per collection and what was skipped."""

    works: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)
    """reason -> number of works skipped for it."""
    parsed: int = 0
    """Works parsed in this run (the rest came from the cache)."""


def load_works(cfg: MusicConfig, cache_dir: str | os.PathLike, progress: bool = False) -> WorkSet:
    """``cfg.n_works`` usable works, as evenly spread over the collections as their sizes allow; parses what the
    cache lacks on ``cfg.workers`` processes, appending each record to the cache as it arrives."""

    require_music21()
    cache_path = Path(cache_dir) / CACHE_FILE
    cache: dict[str, dict] = {}
    if cache_path.is_file():
        for line in cache_path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                cache[rec["id"]] = rec
    queues = candidate_works(cfg.collections, cfg.seed)
    chosen: dict[str, list[dict]] = {c: [] for c in cfg.collections}
    skipped: dict[str, int] = {}
    share = {c: cfg.n_works // len(cfg.collections) + (i < cfg.n_works % len(cfg.collections))
             for i, c in enumerate(cfg.collections)}
    parsed = 0
    workers = cfg.workers or os.cpu_count() or 1
    bar = tqdm(total=cfg.n_works, desc="music works", disable=not progress)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool, open(cache_path, "a") as log:
        while True:
            need = {c: share[c] - len(chosen[c]) for c in cfg.collections if queues[c] and share[c] > len(chosen[c])}
            if not need:
                short = cfg.n_works - sum(len(v) for v in chosen.values())
                # A collection that ran out leaves its share to the others, evenly.
                left = [c for c in cfg.collections if queues[c]]
                if short <= 0 or not left:
                    break
                for i, c in enumerate(left):
                    share[c] += short // len(left) + (i < short % len(left))
                continue
            # Draw a little more than needed: about a quarter of works fail the key or meter test.
            batch = [(c, queues[c].pop(0)) for c, k in need.items() for _ in range(min(len(queues[c]), k + k // 3 + 1))]
            todo = [(c, w) for c, w in batch if _wid(w) not in cache]
            for rec in pool.map(_parse_star, [(c, w["path"], w["number"]) for c, w in todo], chunksize=2):
                cache[rec["id"]] = rec
                log.write(json.dumps(rec) + "\n")
                parsed += 1
            log.flush()
            for c, w in batch:
                rec = cache[_wid(w)]
                reason = usable(rec, cfg.min_key_confidence)
                if reason:
                    skipped[reason] = skipped.get(reason, 0) + 1
                elif len(chosen[c]) < share[c]:
                    chosen[c].append(rec)
                    bar.update(1)
    bar.close()
    works = [w for c in cfg.collections for w in chosen[c]]
    if len(works) < 2:
        raise ValueError(f"only {len(works)} usable works in collections {list(cfg.collections)}; need at least 2")
    return WorkSet(works, skipped, parsed)


def _wid(w: dict) -> str:
    return f"{w['path']}#{w['number']}" if w["number"] else w["path"]


def split_works(works: list[dict], n_heldout_works: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(training works, held-out works): a seeded draw of whole works, so no excerpt of a held-out work trains."""
    order = np.random.default_rng([seed, 1]).permutation(len(works))
    k = min(max(1, n_heldout_works), len(works) - 1)
    return [works[i] for i in sorted(order[k:])], [works[i] for i in sorted(order[:k])]
