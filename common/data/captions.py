"""The procedural world's attributes and its prompt language: captions written from attributes, and read back.

Every room that judges a prompt (the scorer's labels, the judges, the world builder) reads it through this module,
so the grammar lives in one place: :func:`make_prompt` writes a caption that mentions some attributes, and
:func:`parse_prompt` inverts it.
"""
from __future__ import annotations

import re

import numpy as np

# The one table of attributes and their values, in label order (see attribute_labels).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "timbre": ("sine", "square", "sawtooth", "plucked", "organ", "bell"),
    "tempo": ("slow", "moderate", "fast"),
    "register": ("low", "middle", "high"),
    "mode": ("major", "minor", "pentatonic", "whole-tone"),
    "density": ("sparse", "medium", "dense"),
    "dynamics": ("soft", "loud", "crescendo", "decrescendo"),
}

# The text encoder's limit; make_prompt never exceeds it.
PROMPT_MAX_BYTES = 96


# ---- prompts --------------------------------------------------------------------------------------------------------

# attribute -> value -> (adjective written before the noun, phrase written after it). The keys run in English
# adjective order, which is the order make_prompt writes adjectives in. Every phrase is unique across the table, so
# parse_prompt can invert make_prompt.
_PHRASES: dict[str, dict[str, tuple[str, str]]] = {
    "dynamics": {"soft": ("soft", "at a soft volume"), "loud": ("loud", "at a loud volume"),
                 "crescendo": ("swelling", "that grows louder"), "decrescendo": ("fading", "that fades away")},
    "tempo": {"slow": ("slow", "at a slow tempo"), "moderate": ("mid-tempo", "at a moderate tempo"),
              "fast": ("fast", "at a fast tempo")},
    "density": {"sparse": ("sparse", "with few notes"), "medium": ("flowing", "with a steady flow of notes"),
                "dense": ("busy", "with many notes")},
    "register": {"low": ("low-pitched", "in a low register"), "middle": ("mid-register", "in the middle register"),
                 "high": ("high-pitched", "in a high register")},
    "mode": {"major": ("major-key", "in a major key"), "minor": ("minor-key", "in a minor key"),
             "pentatonic": ("pentatonic", "on a pentatonic scale"),
             "whole-tone": ("whole-tone", "on a whole-tone scale")},
    "timbre": {"sine": ("sine-wave", "played on sine waves"),
               "square": ("square-wave", "played on a square-wave synth"),
               "sawtooth": ("sawtooth", "played on a sawtooth synth"),
               "plucked": ("plucked-string", "played on a plucked string"), "organ": ("organ", "played on an organ"),
               "bell": ("bell", "played on bells")},
}
_NOUNS = ("melody", "tune", "piece")
_PHRASE_MEANING: dict[str, tuple[str, str]] = {
    phrase: (name, value) for name, values in _PHRASES.items() for value, pair in values.items() for phrase in pair}
# Longest first, so that at one position "played on a sawtooth synth" wins over "sawtooth"; hyphens count as part of
# a word so that "low" never matches inside "low-pitched" or "slow".
_PHRASE_RE = re.compile(r"(?<![\w-])(" + "|".join(re.escape(p) for p in sorted(_PHRASE_MEANING, key=len, reverse=True))
                        + r")(?![\w-])")


def _compose(noun: str, adjectives: list[str], posts: list[str]) -> str:
    head = " ".join([*adjectives, noun])
    article = "an" if head[0] in "aeiou" else "a"
    return " ".join([article, head, *posts])


def make_prompt(rng: np.random.Generator, attributes: dict[str, str], described: tuple[str, ...]) -> str:
    """An ASCII prompt of at most PROMPT_MAX_BYTES bytes that mentions exactly the ``described`` attributes.

    Each attribute is written either as an adjective or as a trailing phrase, at random, with a random noun.
    """
    unknown = [name for name in described if name not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"make_prompt: unknown attribute(s) {unknown}; known: {list(ATTRIBUTES)}")
    bad = [f"{name}={attributes.get(name)!r}" for name in described if attributes.get(name) not in ATTRIBUTES[name]]
    if bad:
        raise ValueError(f"make_prompt: described attribute(s) without a known value: {', '.join(bad)}")
    noun = _NOUNS[rng.integers(len(_NOUNS))]
    as_post = {name: bool(rng.random() < 0.5) for name in described}
    post_order = [described[i] for i in rng.permutation(len(described))]
    while True:
        adjectives = [_PHRASES[n][attributes[n]][0] for n in _PHRASES if n in described and not as_post[n]]
        posts = [_PHRASES[n][attributes[n]][1] for n in post_order if as_post[n]]
        prompt = _compose(noun, adjectives, posts)
        if len(prompt.encode("utf-8")) <= PROMPT_MAX_BYTES:
            return prompt
        # Adjectives are the short forms, and all six as adjectives fit (a test checks it): shorten until it fits.
        longest = max((n for n in described if as_post[n]), key=lambda n: len(_PHRASES[n][attributes[n]][1]))
        as_post[longest] = False


def parse_prompt(prompt: str) -> dict[str, str]:
    """The attributes a prompt mentions, ``{name: value}`` in ATTRIBUTES order (the inverse of make_prompt).

    Matching is case-insensitive and finds the phrases anywhere in the text; a prompt that gives one attribute two
    different values is a ValueError.
    """
    found: dict[str, str] = {}
    for match in _PHRASE_RE.finditer(prompt.lower()):
        name, value = _PHRASE_MEANING[match.group(1)]
        if found.setdefault(name, value) != value:
            raise ValueError(f"prompt {prompt!r} gives {name} two values: {found[name]!r} and {value!r}")
    return {name: found[name] for name in ATTRIBUTES if name in found}


def attribute_labels(attributes: dict[str, str]) -> np.ndarray:
    """int64 ``[len(ATTRIBUTES)]``: the index of each attribute's value in its ATTRIBUTES tuple, in table order."""
    labels = []
    for name, values in ATTRIBUTES.items():
        if name not in attributes:
            raise ValueError(f"attribute_labels: no value for attribute {name!r} in {attributes}")
        if attributes[name] not in values:
            raise ValueError(f"attribute_labels: {name}={attributes[name]!r} is not one of {values}")
        labels.append(values.index(attributes[name]))
    return np.asarray(labels, dtype=np.int64)
