"""Attributes and captions of the real-music world.

Each clip's attributes come from the work's real metadata (collection, region or composer, time signature, key
analysis) or from how the clip was rendered (instrument family, tempo, octave transposition), and two from the
excerpt's notes (texture: how many voices sound; density: onsets per second). Captions are short English noun phrases
that name 1 to 4 of them ("a fast Irish dance tune for woodwinds", "a Bach chorale on the organ in a minor key"),
several per clip, so one caption fits many clips.
"""
from __future__ import annotations

import numpy as np

from divcfg.common.data.caption_schema import CaptionSchema

# Text encoder limit, as in the procedural world.
PROMPT_MAX_BYTES = 96

# style value -> (head nouns naming it; the first is written, all are parsed). Values are per collection, with the
# region (Essen) or composer where the metadata gives it.
STYLES: dict[str, tuple[str, ...]] = {
    "bach-chorale": ("bach chorale", "chorale by bach"),
    "european-folk": ("european folk song", "folk song from europe"),
    "chinese-folk": ("chinese folk song", "folk song from china"),
    "irish-dance": ("irish dance tune", "irish dance"),
    "scottish-air": ("scottish air", "air from scotland"),
    "fiddle-tune": ("american fiddle tune", "fiddle tune"),
    "palestrina": ("renaissance mass by palestrina", "palestrina mass"),
    "madrigal": ("monteverdi madrigal", "madrigal by monteverdi"),
    "trecento": ("trecento song", "italian trecento piece"),
    "quartet": ("classical string quartet", "string quartet movement"),
}

# Attributes after style, in table order; the rendering draws instrument, tempo and register.
_OTHER_VALUES: dict[str, tuple[str, ...]] = {
    "mode": ("major", "minor"),
    "meter": ("duple", "triple", "compound"),
    "instrument": ("piano", "organ", "strings", "woodwind", "brass", "guitar"),
    "tempo": ("slow", "moderate", "fast"),
    "register": ("low", "middle", "high"),
    "texture": ("solo", "voices"),
    "density": ("sparse", "medium", "dense"),
}

# attribute -> value -> (adjective before the noun or None, phrases after it; the first is written).
_FORMS: dict[str, dict[str, tuple[str | None, tuple[str, ...]]]] = {
    "tempo": {"slow": ("slow", ("at a slow tempo",)), "moderate": ("mid-tempo", ("at a moderate tempo",)),
              "fast": ("fast", ("at a fast tempo",))},
    "density": {"sparse": ("sparse", ("with few notes",)), "medium": ("flowing", ("with a steady flow of notes",)),
                "dense": ("busy", ("with many notes",))},
    "register": {"low": ("low-pitched", ("in a low register",)),
                 "middle": ("mid-register", ("in the middle register",)),
                 "high": ("high-pitched", ("in a high register",))},
    "mode": {"major": ("major-key", ("in a major key",)), "minor": ("minor-key", ("in a minor key",))},
    "texture": {"solo": ("solo", ("as a single line",)), "voices": ("polyphonic", ("in several voices",))},
    "meter": {"duple": (None, ("in duple time",)), "triple": (None, ("in triple time",)),
              "compound": (None, ("in compound time",))},
    "instrument": {"piano": (None, ("on the piano", "for piano")), "organ": (None, ("on the organ", "for organ")),
                   "strings": (None, ("for strings", "on strings")),
                   "woodwind": (None, ("for woodwinds", "on woodwinds")),
                   "brass": (None, ("for brass", "on brass")), "guitar": (None, ("on the guitar", "for guitar"))},
}
_ADJECTIVE_ORDER = ("tempo", "density", "register", "mode", "texture")  # English adjective order
_NOUNS = ("piece", "tune", "piece of music")
_PROPER = {"bach", "european", "europe", "chinese", "china", "irish", "scottish", "scotland", "american",
           "palestrina", "renaissance", "monteverdi", "trecento", "italian"}


def attribute_table(styles: list[str]) -> dict[str, tuple[str, ...]]:
    """The world's table: the styles of its collections, then the fixed attributes."""
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise ValueError(f"unknown style(s) {unknown}; known: {list(STYLES)}")
    return {"style": tuple(styles), **_OTHER_VALUES}


def caption_schema(styles: list[str]) -> CaptionSchema:
    """The schema the judges read from the world directory: every phrase that names a value."""
    table = attribute_table(styles)
    phrases = {"style": {s: STYLES[s] for s in styles}}
    for name, values in _FORMS.items():
        phrases[name] = {v: ((adj,) if adj else ()) + posts for v, (adj, posts) in values.items()}
    return CaptionSchema(table, phrases)


def _display(text: str) -> str:
    return " ".join(w.capitalize() if w in _PROPER else w for w in text.split(" "))


def make_caption(rng: np.random.Generator, attributes: dict[str, str], described: tuple[str, ...]) -> str:
    """A caption of at most PROMPT_MAX_BYTES bytes naming exactly the ``described`` attributes.

    The style, when described, is the head noun; others are adjectives or trailing phrases, chosen at random.
    """
    noun = STYLES[attributes["style"]][0] if "style" in described else _NOUNS[rng.integers(len(_NOUNS))]
    others = [n for n in described if n != "style"]
    as_post = {n: _FORMS[n][attributes[n]][0] is None or bool(rng.random() < 0.5) for n in others}
    post_order = [others[i] for i in rng.permutation(len(others))]
    while True:
        adjectives = [_FORMS[n][attributes[n]][0] for n in _ADJECTIVE_ORDER if n in others and not as_post[n]]
        posts = [_FORMS[n][attributes[n]][1][0] for n in post_order if as_post[n]]
        head = " ".join([*adjectives, noun])
        caption = _display(" ".join(["an" if head[0] in "aeiou" else "a", head, *posts]))
        if len(caption.encode()) <= PROMPT_MAX_BYTES:
            return caption
        shorten = [n for n in others if as_post[n] and _FORMS[n][attributes[n]][0] is not None]
        if not shorten:
            raise ValueError(f"caption for {described} of {attributes} exceeds {PROMPT_MAX_BYTES} bytes: {caption!r}")
        as_post[max(shorten, key=lambda n: len(_FORMS[n][attributes[n]][1][0]))] = False


def describe(rng: np.random.Generator, attributes: dict[str, str], table: dict[str, tuple[str, ...]],
             low: int = 1, high: int = 4) -> tuple[tuple[str, ...], str]:
    """A random partial description: ``(described names in table order, caption)`` naming ``low..high`` of them."""
    k = int(rng.integers(low, high + 1))
    chosen = set(rng.choice(list(table), size=k, replace=False).tolist())
    described = tuple(n for n in table if n in chosen)
    return described, make_caption(rng, attributes, described)


# ---- attributes from metadata and rendering --------------------------------------------------------------------------

def mode_of(key_mode: str, confidence: float, min_confidence: float) -> str | None:
    """major/minor from key analysis; None when the analysis is not confident (the clip's mode goes unlabelled)."""
    if key_mode not in ("major", "minor") or not confidence >= min_confidence:
        return None
    return key_mode


def meter_of(time_signature: str | None) -> str | None:
    """duple (2/4, 4/4, 2/2, ...), triple (3/4, 3/8, 3/2) or compound (6/8, 9/8, 12/8, 6/4); None otherwise
    (5/8, or no time signature)."""
    if not time_signature or "/" not in time_signature:
        return None
    try:
        num, den = (int(x) for x in time_signature.split("/"))
    except ValueError:  # additive signatures such as 3+2/8 have no simple meter
        return None
    if num in (6, 9, 12) and den in (4, 8, 16):
        return "compound"
    if num in (3,):
        return "triple"
    if num in (2, 4):
        return "duple"
    return None


# Onset-rate bounds and tempo bounds; register bounds on the median MIDI pitch (G3 = 55, B4 = 71).
TEMPO_BPM = {"slow": (60.0, 76.0), "moderate": (92.0, 112.0), "fast": (132.0, 160.0)}
REGISTER_BOUNDS = (55.0, 71.0)
DENSITY_BOUNDS = (2.5, 5.0)


def register_of(median_pitch: float) -> str:
    low, high = REGISTER_BOUNDS
    return "low" if median_pitch < low else ("middle" if median_pitch < high else "high")


def density_of(onsets_per_s: float) -> str:
    low, high = DENSITY_BOUNDS
    return "sparse" if onsets_per_s < low else ("medium" if onsets_per_s < high else "dense")


def texture_of(max_voices: int) -> str:
    """solo when at most one note sounds at a time, voices otherwise."""
    return "solo" if max_voices <= 1 else "voices"
