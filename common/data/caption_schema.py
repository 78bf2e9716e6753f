"""A world's attribute schema as data: the attribute table and the phrases its captions use for each value.

The procedural world's table and parser are code (``ATTRIBUTES``, ``parse_prompt``); a world whose captions come
from elsewhere (the real-music world) writes its schema to ``captions.json`` in the world directory, and the judges
read it from there, so judging a prompt needs no import of the world that wrote it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

SCHEMA_FILE = "captions.json"


@dataclass(frozen=True)
class CaptionSchema:
    """Attribute table plus, per value, the phrases that name it in a caption (each phrase names one value only)."""

    attributes: dict[str, tuple[str, ...]]
    """attribute -> its values, in label order."""
    phrases: dict[str, dict[str, tuple[str, ...]]]
    """attribute -> value -> the phrases (lower case) whose presence in a caption means that value."""
    scored: tuple[str, ...] | None = None
    """The attributes the trained scorer's adherence counts: those it reads from decoded audio well above chance
    (the world's scorer stage decides, reward/scorer.py: ``attributes_above_chance``); None counts them all."""
    _meaning: dict[str, tuple[str, str]] = field(init=False, repr=False, compare=False)
    _regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        meaning: dict[str, tuple[str, str]] = {}
        for name, values in self.phrases.items():
            if name not in self.attributes:
                raise ValueError(f"caption schema: phrases for unknown attribute {name!r}; "
                                 f"known: {list(self.attributes)}")
            for value, phrases in values.items():
                if value not in self.attributes[name]:
                    raise ValueError(f"caption schema: phrase for {name}={value!r}, not one of {self.attributes[name]}")
                for phrase in phrases:
                    if phrase != phrase.lower() or not phrase.strip():
                        raise ValueError(f"caption schema: phrase {phrase!r} must be non-empty lower case")
                    if meaning.setdefault(phrase, (name, value)) != (name, value):
                        raise ValueError(f"caption schema: phrase {phrase!r} names both {meaning[phrase]} and "
                                         f"{(name, value)}")
        object.__setattr__(self, "_meaning", meaning)
        unknown = set(self.scored or ()) - set(self.attributes)
        if unknown:
            raise ValueError(f"caption schema: scored attributes {sorted(unknown)} are not in the table "
                             f"{list(self.attributes)}")
        # Longest first, so "a minor key" wins over a shorter phrase at the same position; hyphens are part of a
        # word, so "low" never matches inside "low-pitched" or "slow".
        alternatives = "|".join(re.escape(p) for p in sorted(meaning, key=len, reverse=True)) or r"(?!)"
        object.__setattr__(self, "_regex", re.compile(r"(?<![\w-])(" + alternatives + r")(?![\w-])"))

    def parse(self, prompt: str) -> dict[str, str]:
        """The attributes ``prompt`` names, ``{name: value}`` in table order; two values for one attribute is a
        ValueError (the prompt contradicts itself)."""
        found: dict[str, str] = {}
        for match in self._regex.finditer(prompt.lower()):
            name, value = self._meaning[match.group(1)]
            if found.setdefault(name, value) != value:
                raise ValueError(f"prompt {prompt!r} gives {name} two values: {found[name]!r} and {value!r}")
        return {name: found[name] for name in self.attributes if name in found}

    def scored_only(self, requested: dict[str, str]) -> dict[str, str]:
        """``requested`` without the attributes the scorer does not count (all of it when ``scored`` is None)."""
        return dict(requested) if self.scored is None else {k: v for k, v in requested.items() if k in self.scored}

    def labels(self, attributes: dict[str, str]) -> np.ndarray:
        """int64 ``[len(self.attributes)]``: each attribute's value index, in table order."""
        out = []
        for name, values in self.attributes.items():
            if attributes.get(name) not in values:
                raise ValueError(f"attribute {name}={attributes.get(name)!r} is not one of {values}")
            out.append(values.index(attributes[name]))
        return np.asarray(out, dtype=np.int64)

    def to_dict(self) -> dict:
        return {"attributes": {k: list(v) for k, v in self.attributes.items()},
                "phrases": {k: {v: list(p) for v, p in vs.items()} for k, vs in self.phrases.items()},
                **({"scored": list(self.scored)} if self.scored is not None else {})}

    @staticmethod
    def from_dict(d: dict, where: str = "caption schema") -> "CaptionSchema":
        if not isinstance(d, dict) or not isinstance(d.get("attributes"), dict) or not isinstance(d.get("phrases"),
                                                                                                   dict):
            raise ValueError(f"{where}: expected {{'attributes': {{...}}, 'phrases': {{...}}}}")
        scored = d.get("scored")
        if scored is not None and not (isinstance(scored, list) and all(isinstance(a, str) for a in scored)):
            raise ValueError(f"{where}: 'scored' must be a list of attribute names, got {scored!r}")
        return CaptionSchema({k: tuple(v) for k, v in d["attributes"].items()},
                             {k: {v: tuple(p) for v, p in vs.items()} for k, vs in d["phrases"].items()},
                             tuple(scored) if scored is not None else None)

    def save(self, world_dir: str | os.PathLike) -> None:
        path = os.path.join(os.fspath(world_dir), SCHEMA_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(path + ".tmp", path)


def load_schema(world_dir: str | os.PathLike) -> CaptionSchema | None:
    """The schema a world wrote, or None for a world without one (the procedural world's is code)."""
    path = os.path.join(os.fspath(world_dir), SCHEMA_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return CaptionSchema.from_dict(json.load(f), where=path)
    except json.JSONDecodeError as e:
        raise ValueError(f"caption schema {path} is not JSON ({e})") from None
