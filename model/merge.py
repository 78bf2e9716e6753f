"""``divcfg merge``: weight interpolation ``θ_λ = (1 − λ) · θ_A + λ · θ_B`` of two policies of one architecture.

θ_A is the quality model (β = 0) and θ_B the diversity model (β = 15) in the method; sweeping λ traces a
quality-diversity front at deployment time with no retraining.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from divcfg.common.storage.checkpoint import CheckpointError, load_weights, save_weights


def merge_state_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], lam: float) -> dict[str, torch.Tensor]:
    """Pure: ``(1 − λ) a + λ b`` per tensor. λ = 0 and λ = 1 return the inputs' values bit for bit."""
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ValueError(f"checkpoints differ in parameters: only in A {only_a[:5]}, only in B {only_b[:5]}")
    out = {}
    for name, ta in a.items():
        tb = b[name]
        if ta.shape != tb.shape:
            raise ValueError(f"parameter {name} has shape {tuple(ta.shape)} in A and {tuple(tb.shape)} in B")
        if lam == 0.0:
            out[name] = ta.clone()
        elif lam == 1.0:
            out[name] = tb.clone()
        elif not ta.is_floating_point():
            raise ValueError(f"parameter {name} is {ta.dtype}; only float tensors can be interpolated")
        else:
            out[name] = torch.lerp(ta.double(), tb.double(), lam).to(ta.dtype)
    return out


def merge_checkpoints(a: str, b: str, lams: list[float], out: str, extrapolate: bool = False) -> list[Path]:
    for lam in lams:
        if not extrapolate and not 0.0 <= lam <= 1.0:
            raise ValueError(f"--lam {lam} is outside [0, 1]; pass --extrapolate to allow it")
    state_a, config_a, meta_a = load_weights(a, "policy")
    state_b, config_b, _ = load_weights(b, "policy")
    arch = {k: v for k, v in config_a.items() if k != "preset"}
    if arch != {k: v for k, v in config_b.items() if k != "preset"}:
        diff = {k: (config_a.get(k), config_b.get(k)) for k in set(config_a) | set(config_b)
                if config_a.get(k) != config_b.get(k)}
        raise ValueError(f"checkpoints {a} and {b} have different architectures: {diff}")
    paths = []
    for lam in lams:
        path = Path(out) if len(lams) == 1 else Path(out) / f"lam_{lam:g}"
        meta = {"merged_from": [str(Path(a).resolve()), str(Path(b).resolve())], "lam": lam,
                "codec": meta_a.get("codec")}
        if meta["codec"] and not Path(meta["codec"]).is_absolute():
            meta["codec"] = str((Path(a) / meta["codec"]).resolve())
        save_weights(path, "policy", merge_state_dicts(state_a, state_b, lam), config_a, meta)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg merge", description=__doc__.split("\n")[0].split(":", 1)[1].strip())
    ap.add_argument("a", help="checkpoint A (λ = 0), e.g. the β = 0 quality model")
    ap.add_argument("b", help="checkpoint B (λ = 1), e.g. the β = 15 diversity model")
    ap.add_argument("--lam", type=float, nargs="+", required=True, help="one or more λ; several give OUT/lam_<λ>/")
    ap.add_argument("--out", required=True, help="output checkpoint directory")
    ap.add_argument("--extrapolate", action="store_true", help="allow λ outside [0, 1]")
    args = ap.parse_args(argv)
    try:
        paths = merge_checkpoints(args.a, args.b, args.lam, args.out, args.extrapolate)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"divcfg merge: error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0
