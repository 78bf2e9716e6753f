"""``divcfg eval``'s closing line names the files it wrote and no others: training.png only when a trained row has
curves (write_outputs removes an earlier evaluation's otherwise)."""
from pathlib import Path

import numpy as np
import pytest

RNG = np.random.default_rng(5)
CURVE = [{"first_step": 0, "last_step": 9, "mean": 0.1}, {"first_step": 10, "last_step": 19, "mean": 0.2}]


def _row(name, kind, adherence, diversity, gamma=1.0, beta=None, train=()):
    """A measured row of one seed on 20 prompts; ``train``: its runs' training summaries."""
    a, d = adherence + RNG.normal(0, 0.01, 20), diversity + RNG.normal(0, 0.01, 20)
    run = {"seed": 0, "adherence": float(a.mean()), "diversity": float(d.mean()),
           "diversity_reward_embedder": float(d.mean()), "frames_per_s": 1000.0,
           "forward_passes_per_token": 2 if gamma != 1.0 else 1, "adherence_by_prompt": a.tolist(),
           "diversity_by_prompt": d.tolist(), "diversity_reward_embedder_by_prompt": d.tolist()}
    return {"name": name, "kind": kind, "guidance_scale": gamma, "lam": None, "beta": beta, "theta_d": None,
            "runs": [run], "train": list(train)}


def _rows(curves: bool) -> list[dict]:
    train = [{"reward_curve": CURVE, "kl_curve": CURVE}] if curves else []
    return [_row("base γ=1", "cfg", 0.40, 0.76), _row("base γ=3", "cfg", 0.56, 0.55, gamma=3.0),
            _row("q", "group", 0.55, 0.53, beta=0.0, train=train),
            _row("d", "group", 0.45, 0.80, beta=15.0, train=train)]


def _wrote(stdout: str, out: Path) -> list[str]:
    """The names in ``divcfg eval``'s closing "wrote OUT/a, b, c" line."""
    line = next(x for x in stdout.splitlines() if x.startswith("wrote "))
    return line.removeprefix(f"wrote {out}/").split(", ")


@pytest.mark.parametrize("curves", [False, True])
def test_the_wrote_line_names_only_the_files_that_exist(tmp_path, monkeypatch, capsys, curves):
    from divcfg.reward import evaluate
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: _rows(curves))
    out = tmp_path / "eval"
    out.mkdir()
    (out / "training.png").write_bytes(b"an earlier evaluation's plot")
    assert evaluate.main(["--world", str(tmp_path), "--bootstrap", "100", "--out", str(out)]) == 0
    names = _wrote(capsys.readouterr().out, out)
    assert ("training.png" in names) == curves == (out / "training.png").is_file()
    for name in names:
        assert (out / name.rstrip("/")).exists(), f"the wrote line names {name}, which {out} does not hold"
    assert {"eval.csv", "eval.json", "pareto.png", "tb/"} <= set(names)
    assert sorted(p.name for p in out.iterdir()) == sorted(n.rstrip("/") for n in names)
