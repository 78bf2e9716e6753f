"""One KV-cached decoding step with static shapes, replayed as a CUDA graph on the GPU.

On a GPU the world's decoders are launch-bound: a step of the small model is about a hundred kernels that each
finish in microseconds, so a step costs the same 3 ms whatever the batch (BENCHMARKS.md, GPU). A CUDA graph
launches the whole step at once. Capturing needs every shape and address fixed, so this step differs from the
eager one (``AudioTokenPolicy._decode_step``) in three ways, and ``tests/model/test_decode_graph.py`` checks it
against the eager step on CPU, where it runs uncaptured:

* the position is a device tensor, and each self-attention layer writes its key/value at that index and attends to
  the whole preallocated cache with the later keys masked (the eager step slices the cache to ``pos + 1``);
* the text condition is padded to ``model.text_max_len`` positions (masked), so one graph serves every prompt batch;
* inputs (the condition, the column of codes) are copied into buffers the graph owns, and the logits come back in
  one it owns. Sampling stays outside the graph, so any ``torch.Generator`` works as in the eager path.

Graphs are cached per policy (outside the module, so a policy still pickles and deep-copies) and keyed by
everything they bake in: rows, length, guidance scale, train/eval mode, autocast and the parameters' addresses.
In-place weight updates (``load_state_dict``, an optimizer step) keep the addresses, so a rollout actor captures
once per shape.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from divcfg.model.text_condition import Condition

if TYPE_CHECKING:  # the policy imports this module; the type is only an annotation here
    from divcfg.model.policy import AudioTokenPolicy

# policy -> {key: DecodeGraph}; a few shapes per policy at most (rows x length x guidance scale).
_GRAPHS: "weakref.WeakKeyDictionary[AudioTokenPolicy, dict]" = weakref.WeakKeyDictionary()
_MAX_GRAPHS_PER_POLICY = 8


def pad_condition(cond: Condition, length: int) -> Condition:
    """``cond`` padded with masked zero states to ``length`` text positions."""
    extra = length - cond.states.shape[1]
    if extra < 0:
        raise ValueError(f"condition has {cond.states.shape[1]} text positions, more than {length}")
    if extra == 0:
        return cond
    return Condition(F.pad(cond.states, (0, 0, 0, extra)), F.pad(cond.mask, (0, extra), value=False))


class DecodeGraph:
    """The static-shape decoding step for ``rows`` condition rows (2B with CFG) over ``s_len`` delayed columns.

    ``load(cond)`` fills the condition buffers (cross-attention keys/values, mask, pooled text state) for one
    ``generate`` call; ``step(column, s)`` runs column ``s`` and returns the next-column logits ``[B, K, V]``
    (guided when ``guidance_scale != 1``) in a buffer that the next ``step`` overwrites.
    """

    def __init__(self, policy: AudioTokenPolicy, rows: int, s_len: int, guidance_scale: float, capture: bool):
        cfg, dev, dtype = policy.cfg, policy.device, policy.dtype
        # A weak reference: the cache's entry for a policy holds this graph, and a strong one would keep the policy
        # (and its GPU memory) alive for ever.
        self._policy, self.guidance_scale = weakref.ref(policy), guidance_scale
        length, dh = cfg.text_max_len, cfg.dim // cfg.n_heads
        self.cross = [(torch.zeros(rows, cfg.n_heads, length, dh, device=dev, dtype=dtype),
                       torch.zeros(rows, cfg.n_heads, length, dh, device=dev, dtype=dtype)) for _ in policy.layers]
        self.cross_mask = torch.zeros(rows, 1, 1, length, dtype=torch.bool, device=dev)
        self.pooled = torch.zeros(rows, 1, cfg.dim, device=dev, dtype=dtype) if policy.cond_pool is not None else None
        # Zeros, not empty: masked keys still enter the attention product with weight 0, and 0 * NaN is NaN.
        self.caches = [(torch.zeros(rows, cfg.n_heads, s_len, dh, device=dev, dtype=dtype),
                        torch.zeros(rows, cfg.n_heads, s_len, dh, device=dev, dtype=dtype)) for _ in policy.layers]
        self.column = torch.full((rows, cfg.n_codebooks, 1), policy.special, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.graph = None
        if capture:
            self._capture()

    @property
    def policy(self) -> AudioTokenPolicy:
        return self._policy()

    def _forward(self) -> torch.Tensor:
        p = self.policy
        x = p._embed(self.column, self.pos)
        if self.pooled is not None:
            x = x + self.pooled
        for layer, lkv, cache in zip(p.layers, self.cross, self.caches):
            x = layer(x, lkv, self.cross_mask, cache=cache, pos=self.pos)
        return p._heads(x, self.guidance_scale)[:, :, 0]

    def _capture(self) -> None:
        # Warm up on a side stream first (cuBLAS and the attention kernels pick their workspaces), as
        # torch.cuda.graphs' documentation prescribes; the warm-up writes only cache column 0.
        # Under autocast the cast weights must be cast inside the graph, not taken from autocast's cache, whose
        # tensors are freed when the caller's autocast region ends (torch.cuda.graphs' documentation).
        amp = (torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
               if torch.is_autocast_enabled("cuda") else contextlib.nullcontext())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), amp:
            for _ in range(2):
                self._forward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), amp:
            self.logits = self._forward()

    def load(self, cond: Condition) -> None:
        p = self.policy
        cond = pad_condition(cond, p.cfg.text_max_len)
        kv, mask = p._cross(cond)
        for (k_buf, v_buf), (k, v) in zip(self.cross, kv):
            k_buf.copy_(k)
            v_buf.copy_(v)
        self.cross_mask.copy_(mask)
        if self.pooled is not None:
            self.pooled.copy_(p._pooled(cond))

    def step(self, column: torch.Tensor, s: int) -> torch.Tensor:
        self.column.copy_(column)
        self.pos.fill_(s)
        if self.graph is None:
            return self._forward()
        self.graph.replay()
        return self.logits


def decode_graph(policy: AudioTokenPolicy, rows: int, s_len: int, guidance_scale: float,
                 capture: bool = True) -> DecodeGraph:
    """The cached :class:`DecodeGraph` for this policy and shape, captured on first use (``capture=False``: the same
    static-shape step run eagerly, which is how CPU tests check it)."""
    params = tuple(t.data_ptr() for t in policy.parameters())
    key = (rows, s_len, float(guidance_scale), policy.dtype, capture, policy.training,
           torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), params)
    graphs = _GRAPHS.setdefault(policy, {})
    if key not in graphs:
        if len(graphs) >= _MAX_GRAPHS_PER_POLICY:
            graphs.pop(next(iter(graphs)))  # the oldest: its memory pool goes with it
        graphs[key] = DecodeGraph(policy, rows, s_len, guidance_scale, capture)
    return graphs[key]
