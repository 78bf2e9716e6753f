"""``--help`` of the Hydra apps (``divcfg train``, ``divcfg pretrain``), read from the config dataclasses.

Hydra's own help prints the composed YAML, which drops the field docstrings of :mod:`divcfg.common.config.schema`. This
lists every group and key with its type, its default (as composed from ``conf/``, so a group file's value shows) and
its docstring.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import textwrap
from functools import lru_cache

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from divcfg.common.config import schema as config_module

SCHEMAS = {"train": config_module.TrainConfig, "pretrain": config_module.PretrainJobConfig}
WIDTH = 100


def plain(text: str) -> str:
    """reST markup as a terminal shows it: a literal, interpreted text or a role (``:func:``) becomes its bare
    text."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"`{1,2}([^`]+)`{1,2}", r"\1", text)


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass whose fields carry a string literal right under them (PEP 257's
    attribute docstrings, which Python itself keeps nowhere)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def type_name(annotation: str) -> str:
    """``Optional[int]`` -> ``int or null`` (what the YAML writes)."""
    m = re.fullmatch(r"Optional\[(.+)\]", annotation)
    return f"{m.group(1)} or null" if m else annotation


def _value(v) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _wrap(text: str, indent: int) -> list[str]:
    return textwrap.wrap(" ".join(plain(text).split()), WIDTH, initial_indent=" " * indent,
                         subsequent_indent=" " * indent) or [""]


def _compose(config_name: str, overrides: list[str]):
    """The composed config (interpolations unresolved) and the chosen file of each config group."""

    config_module.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_module.CONF_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    return OmegaConf.to_container(cfg, resolve=False), choices


def _group_lines(prefix: str, cls: type, values: dict, choices: dict) -> list[str]:
    """One config group: its docstring, the files that can fill it, then each key."""
    head = f"{prefix}: {plain(inspect.cleandoc(cls.__doc__ or ''))}"
    files = sorted(p.removesuffix(".yaml") for p in _group_files(prefix))
    lines = _wrap(head, 0)
    if files:
        now = choices.get(prefix) or "none, the schema defaults"
        lines += _wrap(f"files: {prefix}=NAME, NAME one of {', '.join(files)} (now: {now})", 2)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        lines.append(f"  {prefix}.{f.name}: {type_name(str(f.type))} = {_value(values.get(f.name))}")
        lines += _wrap(docs.get(f.name, ""), 6)
    return lines


def _group_files(group: str) -> list[str]:
    d = os.path.join(config_module.CONF_DIR, group)
    return [n for n in os.listdir(d) if n.endswith(".yaml")] if os.path.isdir(d) else []


def config_help(config_name: str, overrides: list[str] = ()) -> str:
    """The help text of ``divcfg <config_name>``; ``overrides`` (``key=value``) change the defaults it shows."""
    schema = SCHEMAS[config_name]
    values, choices = _compose(config_name, list(overrides))
    lines = [f"usage: divcfg {config_name} [KEY=VALUE ...] [--cfg job] [--multirun] [--hydra-help]", ""]
    lines += _wrap(inspect.cleandoc(schema.__doc__ or ""), 0) + [""]
    lines += _wrap(f"Set any key below as KEY=VALUE. Types, defaults and descriptions come from the config "
                   f"dataclasses in common/config/schema.py; a default is the composed value (conf/{config_name}.yaml and "
                   f"the chosen group files, after any overrides given before --help). `divcfg {config_name} --cfg "
                   f"job` prints the whole composed config as YAML; ??? marks a required value.", 0)
    top = [f for f in dataclasses.fields(schema) if not dataclasses.is_dataclass(_field_class(schema, f))]
    if top:
        docs = field_docs(schema)
        lines += ["", "top-level keys:"]
        for f in top:
            lines.append(f"  {f.name}: {type_name(str(f.type))} = {_value(values.get(f.name))}")
            lines += _wrap(docs.get(f.name, ""), 6)
    for f in dataclasses.fields(schema):
        cls = _field_class(schema, f)
        if dataclasses.is_dataclass(cls):
            lines += [""] + _group_lines(f.name, cls, values.get(f.name) or {}, choices)
    return "\n".join(lines)


def _field_class(schema: type, f: dataclasses.Field):
    """The class a field holds (its annotation is a string under ``from __future__ import annotations``)."""
    return getattr(config_module, str(f.type), None)
