"""``--help`` a person can read: the Hydra apps list their config from the dataclasses; argparse commands show no
reST markup and document every option."""
from __future__ import annotations

import dataclasses
import re

from divcfg.cli import main
from divcfg.common.config.help import field_docs, plain, type_name
from divcfg.common.config.schema import AlgoConfig, LearnerConfig, TrainConfig


def test_field_docs_are_read_from_the_source():
    docs = field_docs(AlgoConfig)
    assert docs["beta"] == "β: weight of the diversity policy-gradient loss; 0 = pure CFG distillation."
    assert docs["max_policy_lag"].startswith("Groups generated more than this many versions behind")
    assert set(docs) == {f.name for f in dataclasses.fields(AlgoConfig)}  # every field documented


def test_plain_and_type_names():
    assert plain("see :func:`divcfg.x.y` and ``a=b`` or `c`") == "see divcfg.x.y and a=b or c"
    assert type_name("Optional[int]") == "int or null" and type_name("float") == "float"


def test_train_help_lists_every_key_with_type_default_and_doc(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "divcfg train --cfg job" in out and "`" not in out
    assert "\n  algo.beta: float = 0.0\n      β: weight of the diversity policy-gradient loss" in out
    assert "\n  run.dir: str = runs/${now:%Y%m%d-%H%M%S}\n" in out  # composed, not resolved
    assert "files: algo=NAME, NAME one of distill, diverse (now: distill)" in out
    for group in dataclasses.fields(TrainConfig):
        cls = getattr(__import__("divcfg.common.config.schema", fromlist=["x"]), group.type)
        assert f"\n{group.name}: " in out
        for f in dataclasses.fields(cls):
            assert f"\n  {group.name}.{f.name}: " in out, f"{group.name}.{f.name} missing from --help"
    assert "publish_every" not in out
    assert "learner.num_gpus" in out  # documented; the learner group reads it


def test_help_defaults_follow_group_files_and_overrides(capsys):
    assert main(["train", "algo=diverse", "learner.steps=7", "--help"]) == 0
    out = capsys.readouterr().out
    assert "\n  algo.beta: float = 15.0\n" in out  # conf/algo/diverse.yaml
    assert "\n  learner.steps: int = 7\n" in out
    assert "(now: diverse)" in out


def test_a_deleted_key_is_refused(capsys):
    assert "publish_every" not in {f.name for f in dataclasses.fields(LearnerConfig)}
    assert main(["train", "learner.publish_every=2", "--cfg", "job"]) != 0
    assert "publish_every" in capsys.readouterr().err


def test_scale_help_has_no_rest_markup(capsys):
    try:
        main(["scale", "--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "change the rollout-actor count of a running divcfg train job" in out
    assert not re.search(r"``|:\w+:`", out), out


def test_sample_help_documents_every_option():
    from divcfg.actors.sample import parser
    undocumented = [a.dest for a in parser()._actions if not a.help]
    assert not undocumented, undocumented
