"""``divcfg bench <name> [options]``: run one benchmark; each writes JSON with ``--json OUT`` and prints a table."""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "generate": ("divcfg.bench.generate", "KV-cached sampling frames/s vs HF MusicGen, and the CFG cost"),
    "batch-sweep": ("divcfg.bench.batch_sweep", "claim 5: frames/s without vs with CFG, each at its best batch"),
    "broadcast": ("divcfg.bench.broadcast", "weight publication to A actors vs one in-process copy"),
    "chaos": ("divcfg.bench.chaos", "random actor and reward-worker kills during a tiny-world run: recovery, loss"),
    "coldstart": ("divcfg.bench.coldstart", "where a new rollout actor's or reward worker's startup seconds go"),
    "soak": ("divcfg.bench.soak", "a long tiny-world run with kills and resizes: RSS and object store growth"),
    "learner": ("divcfg.bench.learner", "learner tokens/s and step split vs one student forward"),
    "griffin-lim": ("divcfg.bench.griffin_lim", "the codec's Griffin-Lim vs torchaudio or a revision"),
    "clap": ("divcfg.bench.clap", "CLAP adherence judging clips/s vs the held-out embedder on the same clips"),
    "judges": ("divcfg.bench.judges", "an eval measurement with Basic Pitch and madmom in worker processes vs here"),
    "tokenize": ("divcfg.bench.tokenize", "divcfg tokenize on a folder vs the codec's encode on the same clips"),
    "pipeline": ("divcfg.bench.pipeline", "the divcfg train loop, async vs sync samples/s, busy fractions, lag"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        lines = ["usage: divcfg bench <name> [--json OUT] [options]", "", "benchmarks:"]
        lines += [f"  {n:<10} {text}" for n, (_, text) in BENCHMARKS.items()]
        print("\n".join(lines), file=sys.stdout if not argv or argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return int(importlib.import_module(BENCHMARKS[argv[0]][0]).main(argv[1:]) or 0)
