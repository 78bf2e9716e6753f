"""Whether a refactor changed any number the models compute: hashes of fixed-seed samples and logits.

    PYTHONPATH=CHECKOUT python experiments/same_numbers.py > CHECKOUT.txt   # once per checkout, then diff the files

Builds divcfg's small policy (random, seed 0) and the tiny random MusicGen under both decoders, samples 40 frames
with and without CFG under one seed, and teacher-forces the sampled codes; prints a SHA-256 prefix of every tensor
(codes, log-probs, logits, guided logits). Identical output means identical numbers, bit for bit. It imports the
policy from where each checkout keeps it (``divcfg.model`` after the rooms by concept, ``divcfg.common`` before),
so a checkout from either side of that move can be compared. One torch thread, seconds on a CPU.
"""
from __future__ import annotations

import hashlib

import torch


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def divcfg_policy():
    try:
        from divcfg.model.policy import build_policy
        from divcfg.model.policy_config import policy_config
    except ImportError:  # a checkout before the rooms by concept
        from divcfg.common.policy import build_policy, policy_config
    return build_policy(policy_config("small", n_codebooks=4, card=256, max_frames=75), seed=0).eval()


def musicgen_policy(decoder: str):
    try:
        from divcfg.model.musicgen.loading import TINY
        from divcfg.model.musicgen.policy import MusicGenSpec
    except ImportError:  # a checkout before the rooms by concept
        from divcfg.common.musicgen import TINY, MusicGenSpec
    try:
        return MusicGenSpec(TINY, text_max_len=96, seed=0, decoder=decoder).build()[0].eval()
    except TypeError:  # a checkout whose MusicGen had only transformers' decoder (the adapter)
        return MusicGenSpec(TINY, text_max_len=96, seed=0).build()[0].eval() if decoder == "transformers" else None


def hashes(name: str, policy, prompts: list[str], frames: int) -> None:
    cond = policy.encode_condition(prompts)
    for g in (1.0, 3.0):
        out = policy.generate(cond, frames, guidance_scale=g, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            guided = policy.guided_logits(out.codes, cond, g) if g != 1.0 else policy.logits(out.codes, cond)
        for what, t in (("codes", out.codes), ("logprobs", out.logprobs), ("teacher_forced_logits", guided)):
            print(f"{name} γ={g:g} {what} {tuple(t.shape)} {digest(t)}")


def main() -> None:
    torch.set_num_threads(1)
    hashes("divcfg-small", divcfg_policy(), ["a fast irish dance tune in duple time", "a slow hymn"] * 2, 40)
    try:
        import transformers  # noqa: F401 (the musicgen extra)
    except ImportError:
        print("musicgen: skipped (transformers is not installed)")
        return
    for decoder in ("divcfg", "transformers"):
        policy = musicgen_policy(decoder)
        if policy is None:
            print(f"musicgen-tiny-{decoder}: skipped (this checkout has no such decoder)")
            continue
        hashes(f"musicgen-tiny-{decoder}", policy, ["a calm piano melody", "fast loud drums"], 12)


if __name__ == "__main__":
    main()
