"""CLAP judging throughput: clips/s of the CLAP adherence judge (reward/clap_judge.py) on 10 s clips, against the
held-out embedder that ``divcfg eval`` runs on the same clips anyway (its diversity), timed alternately in one run.

What is timed, per call, on ``--clips`` random clips at ``--sample-rate`` (MusicGen's EnCodec rate, 32 kHz):
:meth:`ClapJudge.score` (resampling to CLAP's 48 kHz, the feature extractor, the audio and text encoders, the
cosine) against :meth:`MusicEmbedder.embed` (its log-mel and encoder) of the ``--embedder`` preset.

The CLAP is a local directory (``--clap DIR``: ``laion/larger_clap_music`` or ``laion/clap-htsat-unfused`` copied
there), or ``--clap htsat-shape``: transformers' default ``ClapConfig`` (the clap-htsat architecture: a 12-layer
RoBERTa and a Swin HTSAT of depths 2, 2, 6, 2) with random weights and a byte-level BPE trained in code, so the
figure needs no download. Its cost is the architecture's, not the weights'.

Entries: ``clap/clips_per_s`` (baseline: the embedder's clips/s; ratio < 1 means CLAP is that much slower) and
``clap/realtime`` (seconds of audio judged per second).

Run: ``divcfg bench clap --clap htsat-shape --threads 2 --json bench/results/clap_cpu.json``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from divcfg.bench.common import interleaved_median_times, machine_info, print_table, write_results

HTSAT_SHAPE = "htsat-shape"


def htsat_shape_clap(directory: Path) -> Path:
    """A random CLAP of transformers' default (clap-htsat) architecture, saved as a user's would be, with a byte-level
    BPE tokenizer trained in code (the real vocabulary needs a download)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["a calm piano melody with soft strings and a slow drum beat"], vocab_size=400,
                            min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(directory))
    tokenizer = RobertaTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"),
                                 model_max_length=77)
    config = ClapConfig()
    config.text_config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    ClapModel(config).save_pretrained(directory)
    ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"), tokenizer=tokenizer
                  ).save_pretrained(directory)
    return directory


def run(clap: str = HTSAT_SHAPE, clips: int = 8, seconds: float = 10.0, sample_rate: int = 32000,
        embedder: str = "small", repeats: int = 3, threads: int = 0, json_out: str | None = None,
        verbose: bool = True) -> list[dict]:
    from divcfg.reward.clap_judge import load_clap_judge
    from divcfg.reward.embedder import MusicEmbedder, embedder_config

    if clips < 1 or seconds <= 0 or repeats < 1:
        raise ValueError(f"--clips, --seconds and --repeats must be positive, got {clips}, {seconds}, {repeats}")
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        directory = htsat_shape_clap(Path(tmp)) if clap == HTSAT_SHAPE else Path(clap)
        judge = load_clap_judge(directory, batch_size=clips)
    model = MusicEmbedder(embedder_config(embedder)).eval()
    wavs = 0.1 * torch.randn(clips, int(seconds * sample_rate), generator=torch.Generator().manual_seed(0))
    prompts = [f"prompt {i % 4}" for i in range(clips)]
    with torch.inference_mode():
        timed = interleaved_median_times({"clap": lambda: judge.score(wavs, sample_rate, prompts),
                                          "embedder": lambda: model.embed(wavs, sample_rate)}, repeats)
    clap_rate, emb_rate = clips / timed["clap"][0], clips / timed["embedder"][0]
    extra = {"clips": clips, "seconds": seconds, "sample_rate": sample_rate, "clap": clap, "embedder": embedder,
             "threads": torch.get_num_threads(), "repeats": repeats, "clap_s": timed["clap"][1],
             "embedder_s": timed["embedder"][1]}
    results = [
        dict(name="clap/clips_per_s", value=clap_rate, unit="clips/s", baseline_value=emb_rate,
             ratio=clap_rate / emb_rate, target=None, met=None, baseline=f"the {embedder} held-out embedder", **extra),
        dict(name="clap/realtime", value=clap_rate * seconds, unit="audio s/s", baseline_value=None, ratio=None,
             target=None, met=None, **extra),
    ]
    if verbose:
        print_table(results)
    if json_out:
        write_results(json_out, results, machine_info("cpu"))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg bench clap", description=__doc__.split("\n")[0])
    ap.add_argument("--clap", default=HTSAT_SHAPE, help=f"a local CLAP directory, or {HTSAT_SHAPE} (random weights)")
    ap.add_argument("--clips", type=int, default=8, help="clips per call (the judge's batch)")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length (CLAP's window is 10 s)")
    ap.add_argument("--sample-rate", type=int, default=32000, help="the clips' rate (MusicGen's EnCodec: 32 kHz)")
    ap.add_argument("--embedder", default="small", help="the embedder preset it is compared with")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats, the two alternating")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: as set)")
    ap.add_argument("--json", dest="json_out", metavar="OUT", default=None, help="write results JSON here")
    args = ap.parse_args(argv)
    try:
        run(args.clap, args.clips, args.seconds, args.sample_rate, args.embedder, args.repeats, args.threads,
            args.json_out)
    except (ValueError, OSError, ImportError) as e:
        print(f"divcfg bench clap: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
