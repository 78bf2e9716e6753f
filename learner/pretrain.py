"""``divcfg pretrain``: supervised next-token training of the base policy, with condition dropout so CFG works.

The trainer is a plain function (:func:`pretrain`) used by the Hydra app below and by ``divcfg world build``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from divcfg.common.config.checks import ConfigError
from divcfg.common.config.hydra_app import run_hydra
from divcfg.common.config.schema import PretrainConfig
from divcfg.common.data.tokens import read_tokens
from divcfg.common.storage.checkpoint import atomic_dir, is_complete, load_weights
from divcfg.learner.schedule import cosine_lr
from divcfg.model.loaders import save_policy
from divcfg.model.policy import AudioTokenPolicy, build_policy
from divcfg.model.policy_config import policy_config


def next_token_loss(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits [B, K, T, V]`` against ``codes [B, K, T]`` over every code and codebook."""
    return F.cross_entropy(logits.flatten(0, 2).float(), codes.flatten())


def pretrain_text(policy: AudioTokenPolicy, prompts: list[str], labels: np.ndarray, n_values: list[int], *,
                  steps: int, batch_size: int = 64, lr: float = 2e-3, seed: int = 0) -> dict:
    """Train ``policy.text`` to read the attributes a caption describes: the offline world's stand-in for the
    pretrained text encoder (T5, CLAP) a real text-to-music model starts from.

    ``labels [N, A]``: for prompt ``i`` and attribute ``a``, the index of the described value, or ``n_values[a]`` when
    the prompt leaves ``a`` free. One linear head per attribute reads the masked mean of the text states; the heads
    are thrown away. Measured on the small world (600-step A/B, text frozen afterwards): prompt information used per
    held-out clip 1.7 -> 12.8 nats, adherence gap under CFG +0.004 -> +0.056. Returns accuracy per attribute on
    every 37th prompt (the heads' own fit: it says the encoder separates what captions say) and seconds.
    """
    labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if labels_t.shape != (len(prompts), len(n_values)):
        raise ValueError(f"labels have shape {tuple(labels_t.shape)}, expected {(len(prompts), len(n_values))}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    text = policy.text.requires_grad_(True).train()
    heads = nn.ModuleList(nn.Linear(policy.cfg.dim, n + 1) for n in n_values).to(policy.device)
    opt = torch.optim.AdamW([*text.parameters(), *heads.parameters()], lr=lr)

    def logits(idx):
        cond = policy.encode_condition([prompts[i] for i in idx])
        m = cond.mask[..., None].to(cond.states.dtype)
        pooled = (cond.states * m).sum(1) / m.sum(1)
        return [h(pooled) for h in heads]

    t0 = time.perf_counter()
    for _ in range(steps):
        idx = rng.integers(0, len(prompts), batch_size)
        loss = sum(F.cross_entropy(lg, labels_t[idx, a].to(policy.device)) for a, lg in enumerate(logits(idx)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    text.requires_grad_(not policy.cfg.freeze_text)
    with torch.no_grad():
        idx = np.arange(0, len(prompts), 37)
        acc = [float((lg.argmax(1).cpu() == labels_t[idx, a]).float().mean()) for a, lg in enumerate(logits(idx))]
    return {"accuracy": acc, "loss": float(loss.detach()), "seconds": time.perf_counter() - t0}


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    return cosine_lr(step, cfg.steps, cfg.lr, warmup=cfg.warmup)


def _save_state(path: Path, policy, opt, step: int, rng: np.random.Generator) -> None:
    with atomic_dir(path) as tmp:
        save_policy(policy, tmp / "policy")
        torch.save({"optimizer": opt.state_dict(), "step": step, "torch_rng": torch.get_rng_state(),
                    "numpy_rng": rng.bit_generator.state}, tmp / "train_state.pt")


def _restore(ckpt: Path, policy, opt, rng: np.random.Generator) -> int:
    """Load a complete checkpoint's weights, optimizer and random streams; returns the step it was taken at."""
    state, _, _ = load_weights(ckpt / "policy", "policy")
    policy.load_state_dict(state)
    train_state = torch.load(ckpt / "train_state.pt", weights_only=True)
    opt.load_state_dict(train_state["optimizer"])
    torch.set_rng_state(train_state["torch_rng"])
    rng.bit_generator.state = train_state["numpy_rng"]
    return int(train_state["step"])


def _step(policy, opt, prompts: list[str], codes: torch.Tensor, rng: np.random.Generator, cfg: PretrainConfig,
          step: int, truncate_prompts: bool) -> tuple[float, torch.Tensor]:
    """One update on a random batch with condition dropout; returns ``(loss, grad_norm)``. Prompts are encoded per
    batch: the text encoder trains with the decoder."""
    idx = rng.integers(0, len(prompts), cfg.batch_size)
    batch_codes = codes[idx]
    cond = policy.encode_condition([prompts[i] for i in idx], truncate=truncate_prompts)
    drop = torch.as_tensor(rng.random(cfg.batch_size) < cfg.cond_dropout)
    cond = policy.drop_condition(cond, drop)
    loss = next_token_loss(policy.logits(batch_codes, cond), batch_codes)
    for group in opt.param_groups:
        group["lr"] = _lr_at(step, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
    opt.step()
    return loss.item(), grad_norm


def pretrain(policy: AudioTokenPolicy, prompts: list[str], codes: np.ndarray, cfg: PretrainConfig, out_dir: str,
             *, resume: bool = True, progress: bool = True, truncate_prompts: bool = False) -> dict:
    """Train ``policy`` on ``(prompts, codes int [N, K, T])``; TensorBoard under ``out_dir/tb``.

    Checkpoints go to ``out_dir/checkpoints/latest`` (complete or absent), and training resumes from there.
    Returns ``{"loss_first", "loss_last", "steps", "seconds"}``.
    """

    if not 0 <= cfg.cond_dropout < 1:
        raise ValueError(f"train.cond_dropout must be in [0, 1), got {cfg.cond_dropout}")
    out = Path(out_dir)
    ckpt = out / "checkpoints" / "latest"
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    start = _restore(ckpt, policy, opt, rng) if resume and is_complete(ckpt) else 0
    history: list[float] = []
    codes_t = torch.as_tensor(np.asarray(codes, dtype=np.int64))
    writer = SummaryWriter(str(out / "tb"))
    policy.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc="pretrain", disable=not progress, initial=start, total=cfg.steps)
    for step in bar:
        loss, grad_norm = _step(policy, opt, prompts, codes_t, rng, cfg, step, truncate_prompts)
        history.append(loss)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            elapsed = time.perf_counter() - t0
            writer.add_scalar("losses/next_token", history[-1], step)
            writer.add_scalar("losses/grad_norm", float(grad_norm), step)
            writer.add_scalar("losses/lr", _lr_at(step, cfg), step)
            writer.add_scalar("throughput/tokens_per_s",
                              len(history) * cfg.batch_size * codes_t[0].numel() / max(elapsed, 1e-9), step)
            bar.set_postfix(loss=f"{history[-1]:.3f}")
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            _save_state(ckpt, policy, opt, step + 1, rng)
    _save_state(ckpt, policy, opt, cfg.steps, rng)
    writer.close()
    policy.eval()
    return {"loss_first": history[0] if history else None, "loss_last": history[-1] if history else None,
            "steps": cfg.steps, "resumed_from": start, "seconds": time.perf_counter() - t0}


def _app(cfg) -> None:


    if cfg.model.family != "divcfg":
        raise ConfigError(f"model.family={cfg.model.family!r}: divcfg pretrain trains divcfg's own policy from scratch; "
                          f"MusicGen comes pretrained: finetune it with `divcfg train model=musicgen_small`")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = read_tokens(cfg.data)
    m = cfg.model
    overrides = {k: m[k] for k in ("dim", "n_layers", "n_heads") if m[k] is not None}
    k, t = data.codes.shape[1:]
    pcfg = policy_config(m.preset, n_codebooks=k, card=int(data.meta["card"]), max_frames=t,
                         text_max_len=m.text_max_len, **overrides)
    policy = build_policy(pcfg, seed=cfg.train.seed)
    train_cfg = PretrainConfig(**OmegaConf.to_container(cfg.train))
    result = pretrain(policy, data.prompts, data.codes, train_cfg, cfg.out, resume=cfg.resume,
                      truncate_prompts=m.truncate_prompts)
    meta = {"codec": data.meta.get("codec"), "pretrain": result, "data": os.path.abspath(cfg.data)}
    save_policy(policy, Path(cfg.out) / "base", meta=meta)
    print(f"pretrain: loss {result['loss_first']:.3f} -> {result['loss_last']:.3f}; policy in {cfg.out}/base")


def main(argv: list[str] | None = None) -> int:
    return run_hydra("pretrain", _app, argv)
