"""``divcfg world build``: the offline music world that finetuning needs, made here because nothing can be downloaded.

Stages, each cached in ``DIR`` and skipped on a re-run with the same seed and version:

  corpus     procedural clips with attribute prompts (regenerated from the seed; prompts in corpus.parquet)
  codec      offline EnCodec: k-means codebooks on encoder latents, then a briefly trained decoder   -> codec/
  tokens     the corpus encoded by the codec                                           -> tokens.parquet, heldout.parquet
  base       the base policy: its text encoder first learns to read captions (then frozen, as MusicGen's T5),
             then next-token pretraining with condition dropout                        -> base/
  embedders  two contrastive music embedders, different seeds and data halves          -> embedder_reward/, embedder_eval/
  scorer     the prompt-adherence scorer (attribute classifier)                        -> scorer/
  measure    CFG gain, diversity collapse, embedder recall, scorer accuracy            -> world.json

The embedders and the scorer learn from audio decoded from codes, because that is what reward workers feed them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from divcfg.codec.evaluation import codec_figures
from divcfg.codec.fit import fit_offline_codec
from divcfg.codec.offline import OfflineCodecConfig, load_codec, reconstruction_metrics
from divcfg.common.config.schema import PretrainConfig
from divcfg.common.data.captions import ATTRIBUTES, attribute_labels
from divcfg.common.data.tokens import read_tokens, write_tokens
from divcfg.common.data.world_dir import _NEEDS_AUDIO, STAGES, WORLD_VERSION, World, WorldError, codec_rate, size_params
from divcfg.learner.pretrain import next_token_loss, pretrain, pretrain_text
from divcfg.model.loaders import load_policy, save_policy
from divcfg.model.policy import build_policy
from divcfg.model.policy_config import policy_config
from divcfg.reward.embedder import embedder_config, recall_at_1, save_embedder, train_embedder
from divcfg.reward.judges import Judges, measure_policy
from divcfg.reward.rhythm_judge import config_from_bands, measure_or_skip, report_figures
from divcfg.reward.scorer import save_scorer, scorer_accuracy, scorer_config, train_scorer
from divcfg.world.music_captions import TEMPO_BPM
from divcfg.world.procedural import WorldConfig, corpus_audio, recaption, write_corpus

KINDS = ("procedural", "music")


def codec_fit_indices(n_train: int, seed: int) -> np.ndarray:
    """The training clips the codec is fitted on: a seeded quarter of them (at least 64)."""
    return np.random.default_rng(seed).permutation(n_train)[: max(64, n_train // 4)]


def build_world(out: str | os.PathLike, size: str = "small", seed: int = 0, progress: bool = True,
                threads: int = 0, kind: str = "procedural", soundfont: str | None = None,
                collections: tuple[str, ...] | None = None, codec: str | None = None) -> dict:
    """Build (or finish building) the world in ``out``; returns the contents of ``world.json``.

    ``kind``: "procedural" (synthetic tones) or "music" (real works from music21's corpus rendered with a SoundFont,
    world/music_clips.py; ``soundfont`` and ``collections`` apply to it); ``codec``: "KxV" (``codec_rate``). Each
    stage is a method of :class:`_Builder`; a new kind supplies its corpus functions (see ``_Builder.__init__``)."""

    p = codec_rate(codec, size_params(size))
    if kind not in KINDS:
        raise WorldError(f"unknown world kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if threads:
        torch.set_num_threads(threads)
    world = World(out)
    world.root.mkdir(parents=True, exist_ok=True)
    state = world.state()
    identity = {"version": WORLD_VERSION, "size": size, "seed": seed, **({"kind": kind} if kind != "procedural" else {}),
                **({"codec": f"{p['n_codebooks']}x{p['card']}"} if codec else {})}
    if state and state.get("identity") != identity:
        raise WorldError(f"{world.root} holds a world built with {state.get('identity')}, not {identity}; "
                         f"use another --out or delete it")
    if not state:  # at once: a build stopped in its first stage is then known as one (world/ensure.py resumes it)
        state = {"identity": identity, "done": {}}
        world.write_state(state)
    src = None
    if kind == "music":  # the music world stands in for the procedural corpus functions (world/music_clips.py)
        from divcfg.world.music_clips import music_source
        src = music_source(size, p, seed, world.root, soundfont, collections, progress=progress)
    builder = _Builder(world, p, seed, identity, progress, src)
    bar = tqdm(STAGES, desc=f"world {kind} {size}", disable=not progress)
    for stage in bar:
        bar.set_postfix(stage=stage)
        if stage in state["done"]:
            continue
        t0 = time.perf_counter()
        if builder.audio is None and stage in _NEEDS_AUDIO:
            builder.audio, builder.clips = builder.corpus_audio(builder.wcfg, 0, p["n_clips"])
        figures = getattr(builder, stage)()  # the stage's outputs are on disk; these figures go to world_state.json
        state["done"][stage] = {"seconds": round(time.perf_counter() - t0, 2), **figures}
        world.write_state(state)
    report = _report(world, state)
    tmp = world.path("world.json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, world.path("world.json"))
    return report


class _Builder:
    """One build of a world: what the stages share, and one method per stage of ``STAGES``, named after it. Each
    writes its outputs under the world's directory and returns the figures recorded with the stage."""

    def __init__(self, world: World, p: dict, seed: int, identity: dict, progress: bool, src=None):

        self.world, self.p, self.seed, self.identity, self.progress, self.src = world, p, seed, identity, progress, src
        self.wcfg = WorldConfig(seed=seed, n_clips=p["n_clips"], duration_s=p["duration_s"])
        self.n_train = p["n_clips"] - p["n_heldout"]
        # The corpus functions of the world's kind: the procedural ones, or those of a source such as the music world.
        if src is None:
            self.attributes, self.labels, self.recaption, self.write_corpus = (ATTRIBUTES, attribute_labels,
                                                                               recaption, write_corpus)
            self.corpus_audio = corpus_audio
        else:
            self.attributes, self.labels, self.recaption, self.write_corpus = (src.attributes, src.labels,
                                                                               src.recaption, src.write_corpus)
            self.corpus_audio = src.corpus_audio
        self.audio: np.ndarray | None = None  # [clips, samples], loaded by build_world for the stages that need it
        self.clips: list | None = None
        self._decoded: dict[str, np.ndarray] = {}

    def decoded(self, codec) -> tuple[np.ndarray, np.ndarray]:
        """Decoded training subset and decoded held-out clips, computed once for both stages that need them."""
        if not self._decoded:
            self._decoded["train"] = _decoded(codec, self.audio, self.p["embedder_clips"], self.n_train, self.seed)
            self._decoded["heldout"] = _decoded_range(codec, self.audio, self.n_train, self.p["n_clips"])
        return self._decoded["train"], self._decoded["heldout"]

    def corpus(self) -> dict:
        world, clips = self.world, self.clips
        self.write_corpus(world.path("corpus.parquet"), clips, include_audio=False)
        unique = list(dict.fromkeys(c.prompt for c in clips[self.n_train:]))
        world.path("prompts_heldout.txt").write_text("\n".join(unique) + "\n")
        music = {"music": self.src.figures()} if self.src else {}
        return {"clips": len(clips), "heldout_prompts": len(unique), **music}

    def codec(self) -> dict:

        p, seed = self.p, self.seed
        fit_idx = codec_fit_indices(self.n_train, seed)
        ccfg = OfflineCodecConfig(sample_rate=self.wcfg.sample_rate, n_codebooks=p.get("n_codebooks", 4),
                                  card=p["card"], head_steps=p["head_steps"], seed=seed)
        codec = fit_offline_codec(self.audio[fit_idx], ccfg, n_vectors=p["fit_vectors"], kmeans_iters=p["kmeans_iters"],
                                  decoder_steps=p["decoder_steps"], progress=self.progress)
        codec.save(self.world.path("codec"))
        return {}

    def tokens(self) -> dict:

        p, audio, clips, n_train = self.p, self.audio, self.clips, self.n_train
        codec = load_codec(self.world.path("codec"))
        codes = np.concatenate([codec.encode(audio[i: i + 64]).numpy() for i in range(0, len(audio), 64)])
        meta = {"codec": "codec", "card": codec.card, "sample_rate": codec.sample_rate,
                "frame_rate": codec.frame_rate, "world_seed": self.seed}
        # Training clips get several captions each (rows share codes); held-out clips keep their one prompt.
        train_rows = [r for c in clips[:n_train] for r in self.recaption(c, p["captions_per_clip"], self.wcfg)]
        train_codes = np.repeat(codes[:n_train], p["captions_per_clip"], axis=0)
        for name, part, part_codes in (("tokens.parquet", train_rows, train_codes),
                                       ("heldout.parquet", clips[n_train:], codes[n_train:])):
            cols = {"clip_id": [c.clip_id for c in part], "described": [list(c.described) for c in part],
                    **{f"attr_{a}": [c.attributes[a] for c in part] for a in self.attributes}}
            write_tokens(self.world.path(name), [c.prompt for c in part], part_codes, meta, cols)
        distinct = [int(len(np.unique(codes[:, k]))) for k in range(codes.shape[1])]
        return {"distinct_codes": distinct,
                "reconstruction": reconstruction_metrics(codec, audio[n_train: n_train + 16])}

    def base(self) -> dict:

        p, seed, attributes = self.p, self.seed, self.attributes
        data = read_tokens(self.world.path("tokens.parquet"))
        k, t = data.codes.shape[1:]
        pcfg = policy_config(p["model"], n_codebooks=k, card=int(data.meta["card"]), max_frames=t,
                             **p.get("model_overrides", {}))
        policy = build_policy(pcfg, seed=seed)
        # The world's stand-in for a pretrained text encoder: read the described attributes from the captions.
        labels = np.array([[attributes[a].index(data.columns[f"attr_{a}"][i]) if a in data.columns["described"][i]
                            else len(attributes[a]) for a in attributes] for i in range(len(data.prompts))])
        text = pretrain_text(policy, data.prompts, labels, [len(v) for v in attributes.values()],
                             steps=p["text_steps"], seed=seed)
        tcfg = PretrainConfig(steps=p["pretrain_steps"], batch_size=p["pretrain_batch"], lr=p["pretrain_lr"],
                              warmup=min(50, p["pretrain_steps"] // 10), seed=seed,
                              ckpt_every=max(50, p["pretrain_steps"] // 4))
        result = pretrain(policy, data.prompts, data.codes, tcfg, str(self.world.path("pretrain")),
                          progress=self.progress)
        save_policy(policy, self.world.path("base"), meta={"codec": "../codec", "pretrain": result,
                                                            "world": self.identity})
        return {"pretrain_seconds": result.pop("seconds"), "text_seconds": round(text["seconds"], 2),
                "text_accuracy": dict(zip(attributes, (round(a, 3) for a in text["accuracy"]))), **result}

    def embedders(self) -> dict:
        from divcfg.codec.offline import load_codec

        p, seed = self.p, self.seed
        codec = load_codec(self.world.path("codec"))
        train_decoded, heldout_decoded = self.decoded(codec)
        recalls = {}
        # Two independent models: different seeds and different halves of the training clips.
        for which, s, half in (("reward", seed + 1, slice(0, None, 2)), ("eval", seed + 2, slice(1, None, 2))):
            ecfg = embedder_config(p["embedder"], seed=s, sample_rate=codec.sample_rate)
            model = train_embedder(train_decoded[half], codec.sample_rate, ecfg, steps=p["embedder_steps"],
                                   batch_size=32, lr=1e-3, progress=self.progress)
            save_embedder(model, self.world.path(f"embedder_{which}"))
            recalls[which] = recall_at_1(model, heldout_decoded, codec.sample_rate, ecfg.chunk_samples,
                                         torch.Generator().manual_seed(seed))
        return {"recall_at_1": recalls}

    def scorer(self) -> dict:
        from divcfg.codec.offline import load_codec

        p, seed, n_train = self.p, self.seed, self.n_train
        codec = load_codec(self.world.path("codec"))
        train_decoded, heldout_decoded = self.decoded(codec)
        labels = np.stack([self.labels(c.attributes) for c in self.clips])
        train_idx = np.random.default_rng(seed + 3).permutation(n_train)[: p["embedder_clips"]]
        scfg = scorer_config(p["scorer"], seed=seed, sample_rate=codec.sample_rate)
        scorer = train_scorer(train_decoded, labels[np.sort(train_idx)], self.attributes, codec.sample_rate, scfg,
                              steps=p["scorer_steps"], batch_size=32, lr=2e-3, progress=self.progress)
        save_scorer(scorer, self.world.path("scorer"))
        # What the codec keeps (codec/evaluation.py): the scorer on held-out clips before and after the round trip.
        figures = codec_figures(codec, self.audio[n_train:], round_tripped=heldout_decoded, accuracy=lambda w: (
            scorer_accuracy(scorer, w, labels[n_train:], codec.sample_rate)))
        stage = {"accuracy": figures["accuracy"]["round_trip"], "codec": figures}
        if self.src is not None:  # a world of real music keeps only the attributes its scorer reads (captions.json)
            stage["attributes"] = self.src.keep_scored(figures["accuracy"]["round_trip"], labels[n_train:])
        return stage

    def measure(self) -> dict:

        # The rhythm judge's ceiling first: it writes the thresholds every later judging of this world reads (from
        # the tempo bands the clips were rendered in, rhythm_judge.json)
        rhythm = measure_or_skip(self.world.root, config=config_from_bands(TEMPO_BPM)) if self.src else None
        measured = _measure(self.world, self.p, self.seed)
        if self.src:  # the independent judges' ceilings: held-out clips as rendered and through the codec
            measured["pitch_judge_real"] = self.src.measure_judge(self.world.root)
            measured["rhythm_judge_real"] = rhythm
        return measured


def _decoded(codec, audio: np.ndarray, n: int, n_train: int, seed: int) -> np.ndarray:
    """Audio decoded from codes for ``n`` training clips (the same subset for embedders and scorer)."""
    idx = np.sort(np.random.default_rng(seed + 3).permutation(n_train)[:n])
    return _decoded_range(codec, audio[idx], 0, len(idx))


def _decoded_range(codec, audio: np.ndarray, start: int, stop: int) -> np.ndarray:
    out = []
    for i in range(start, stop, 64):
        x = audio[i: min(stop, i + 64)]
        out.append(codec.decode(codec.encode(x))[:, : x.shape[1]].numpy())
    return np.concatenate(out)


def _measure(world: World, p: dict, seed: int) -> dict:

    judges = Judges.load(world.root)
    base = load_policy(world.path("base")).eval()
    prompts = world.heldout_prompts()[: p["measure_prompts"]]
    heldout = read_tokens(world.path("heldout.parquet"))
    n_frames = heldout.codes.shape[2]
    # FAD's reference: held-out-embedder features of the held-out clips, decoded as the samples are.
    real = judges.embed(judges.decode(heldout.codes), "eval").numpy()
    rows = {}
    for gamma in (1.0, 3.0):
        rows[gamma] = measure_policy(base, judges, prompts, p["measure_samples"], gamma, n_frames, seed=seed,
                                     teacher=base, teacher_scale=3.0, fad_reference=real)
    return {"cfg1": rows[1.0], "cfg3": rows[3.0], "prompts": len(prompts), "samples_per_prompt": p["measure_samples"],
            **_prompt_use(base, judges, heldout)}


@torch.inference_mode()
def _prompt_use(base, judges, heldout, n: int = 64) -> dict:
    """How much the base model uses its prompt, and the best adherence its samples could reach.

    ``prompt_nats_per_clip``: held-out negative log-likelihood without the prompt minus with it, summed over a clip's
    tokens. A prompt names a few attributes, worth a few nats in all, and most of it is spent on the first frames
    (the rest follows from the audio so far), so per token the gain looks negligible even when the model uses the
    prompt; per clip it is comparable with the prompt's information. Zero means CFG has nothing to amplify.
    ``adherence_real`` scores the held-out clips themselves (through the codec), the ceiling for samples.
    """

    codes = torch.as_tensor(np.asarray(heldout.codes[:n]), dtype=torch.long)
    prompts = heldout.prompts[:n]
    nll_cond = next_token_loss(base.logits(codes, base.encode_condition(prompts)), codes)
    nll_null = next_token_loss(base.logits(codes, base.null_condition(len(prompts))), codes)
    real = judges.adherence(judges.decode(codes), prompts).numpy()
    return {"heldout_nll_cond": float(nll_cond), "heldout_nll_null": float(nll_null),
            "prompt_nats_per_clip": float(nll_null - nll_cond) * codes[0].numel(),
            "adherence_real": float(np.nanmean(real))}


def _paired_se(a: list | None, b: list | None) -> float | None:
    """Standard error of the mean per-prompt difference ``b - a`` (the same prompts, so the pairing removes the
    prompt-to-prompt spread that dominates each arm's own error); None for worlds measured before it was recorded."""
    if not a or not b:
        return None
    d = np.array([y - x for x, y in zip(a, b) if x is not None and y is not None])
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None


def _report(world: World, state: dict) -> dict:

    done = state["done"]
    m = done["measure"]
    return {
        "identity": state["identity"],
        "adherence_cfg1": m["cfg1"]["adherence"], "adherence_cfg3": m["cfg3"]["adherence"],
        "adherence_gap": m["cfg3"]["adherence"] - m["cfg1"]["adherence"],
        "adherence_gap_se": _paired_se(m["cfg1"].get("adherence_by_prompt"), m["cfg3"].get("adherence_by_prompt")),
        "diversity_cfg1": m["cfg1"]["diversity"], "diversity_cfg3": m["cfg3"]["diversity"],
        "diversity_gap": m["cfg3"]["diversity"] - m["cfg1"]["diversity"],  # CFG's collapse: negative
        "diversity_gap_se": _paired_se(m["cfg1"].get("diversity_by_prompt"), m["cfg3"].get("diversity_by_prompt")),
        "fad_cfg1": m["cfg1"].get("fad"), "fad_cfg3": m["cfg3"].get("fad"),
        "teacher_loglik_cfg1": m["cfg1"].get("teacher_loglik"), "teacher_loglik_cfg3": m["cfg3"].get("teacher_loglik"),
        "adherence_real": m.get("adherence_real"),
        "heldout_nll": {"cond": m.get("heldout_nll_cond"), "null": m.get("heldout_nll_null")},
        "prompt_nats_per_clip": m.get("prompt_nats_per_clip"),
        "embedder_recall_at_1": done["embedders"]["recall_at_1"],
        "scorer_accuracy": done["scorer"]["accuracy"],
        **({"scorer_attributes": done["scorer"]["attributes"]} if "attributes" in done["scorer"] else {}),
        "codec_distinct_codes": done["tokens"]["distinct_codes"],
        "text_encoder_accuracy": done["base"].get("text_accuracy"),
        "codec_reconstruction": done["tokens"]["reconstruction"],
        "codec_figures": done["scorer"].get("codec"),
        "pretrain_loss": {"first": done["base"]["loss_first"], "last": done["base"]["loss_last"]},
        "measured_on": {"prompts": m["prompts"], "samples_per_prompt": m["samples_per_prompt"]},
        "stage_seconds": {s: done[s]["seconds"] for s in STAGES},
        **({"adherence_judge_cfg1": m["cfg1"].get("adherence_judge"), "adherence_judge_cfg3": m["cfg3"].get(
            "adherence_judge"), "adherence_judge_gap_se": _paired_se(*(m[g].get("adherence_judge_by_prompt")
                                                                       for g in ("cfg1", "cfg3"))),
            "pitch_judge_real": m["pitch_judge_real"], "music": done["corpus"].get("music")}
           if "pitch_judge_real" in m else {}),
        **report_figures(world.root, m),  # the rhythm judge's (reward/rhythm_judge.py)
    }


def main(argv: list[str] | None = None) -> int:
    from divcfg.world.folder import KIND as FOLDER
    from divcfg.world.folder import add_folder_arguments, folder_cli, folder_options_given

    ap = argparse.ArgumentParser(prog="divcfg world", description="Build the offline music world.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or finish) a world; cached and resumable")
    b.add_argument("--size", default="small", help="tiny (tests, < 2 min) or small (about 24 min; music: 29)")
    b.add_argument("--out", default=None, help="output directory (default worlds/SIZE)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--kind", default="procedural", help=f"world kind: {', '.join((*KINDS, FOLDER))}")
    b.add_argument("--codec", default=None, metavar="KxV",
                   help="codec codebooks x codes each (default: the size's, 4x256 on small: 100 tokens/s, 800 bit/s)")
    b.add_argument("--soundfont", default=None, help="music: SF2 to render with (default: pretty_midi's TimGM6mb)")
    b.add_argument("--collections", default=None,
                   help="music: comma-separated music21 collections (default bach,essen,oneills,ryans,airds)")
    add_folder_arguments(b)  # folder: a world from the user's own audio and their MusicGen (world/folder.py)
    b = sub.add_parser("listen", help="spectrograms of held-out prompts: original, codec round trip, base model "
                       "at γ = 1 and 3, students")
    b.add_argument("world", help="world directory")
    b.add_argument("--student", action="append", default=[], metavar="NAME=CKPT",
                   help="a finetuned checkpoint to sample without CFG (repeatable)")
    b.add_argument("--clips", type=int, default=3, help="held-out prompts (columns)")
    b.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every model")
    b.add_argument("--out", required=True, help="output directory: spectrograms.png, tb/")
    args = ap.parse_args(argv)
    if args.cmd == "listen":
        from divcfg.world.listen import listen_cli
        return listen_cli(args)
    if args.kind == FOLDER or folder_options_given(args):  # folder_cli refuses folder options with another kind
        return folder_cli(args)
    try:
        size_params(args.size)
        report = build_world(args.out or f"worlds/{args.size}", args.size, args.seed,
                             progress=not args.no_progress, threads=args.threads, kind=args.kind,
                             soundfont=args.soundfont,
                             collections=tuple(args.collections.split(",")) if args.collections else None,
                             codec=args.codec)
    except (WorldError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"divcfg world: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("adherence_cfg1", "adherence_cfg3", "diversity_cfg1", "diversity_cfg3")}))
    return 0
