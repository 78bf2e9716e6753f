"""The ``divcfg`` command line: one subcommand per user task, each with its own ``--help``.

Each subcommand lives in the room that owns it and exposes ``main(argv) -> int``; it is imported only when run, so
``divcfg --help`` stays fast. Hydra apps (``train``, ``pretrain``) take Hydra overrides (``key=value``).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

# name -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("divcfg.job.train", "diversity-rewarded CFG distillation on Ray (Hydra app; the main job)"),
    "pretrain": ("divcfg.learner.pretrain", "supervised pretraining of the base policy on a token dataset (Hydra app)"),
    "world": ("divcfg.world.build", "build the offline music world: corpus, codec, base model, embedders, scorer"),
    "tokenize": ("divcfg.codec.tokenize", "tokenise a folder of WAV files plus a captions file into a token dataset"),
    "embedder": ("divcfg.reward.embedder_cli", "train a contrastive music embedder"),
    "sample": ("divcfg.actors.sample", "sample audio from a policy checkpoint (or a tiny demo model) to WAV files"),
    "merge": ("divcfg.model.merge", "interpolate the weights of two checkpoints"),
    "export": ("divcfg.model.export", "write a MusicGen student as a Hugging Face directory (from_pretrained)"),
    "eval": ("divcfg.reward.evaluate", "evaluate models on quality and diversity; Pareto plot"),
    "submit": ("divcfg.deploy.submit", "submit `divcfg train` as a Ray job to a cluster"),
    "scale": ("divcfg.deploy.scale", "change the rollout-actor count of a running job"),
    "bench": ("divcfg.bench.run", "run a benchmark and write its JSON"),
}


def _available() -> dict[str, tuple[str, str]]:
    """Subcommands whose module exists in this checkout."""
    out = {}
    for name, (module, text) in COMMANDS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out[name] = (module, text)
    return out


def usage(commands: dict[str, tuple[str, str]]) -> str:
    width = max(len(n) for n in commands)
    lines = ["usage: divcfg <command> [args...]", "", "Diversity-rewarded CFG distillation of text-to-music models.",
             "", "commands:"]
    lines += [f"  {n.ljust(width)}  {text}" for n, (_, text) in commands.items()]
    lines += ["", "Run `divcfg <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(commands))
        return 0
    if argv[0] in ("-V", "--version"):
        from divcfg import __version__
        print(f"divcfg {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"divcfg: unknown command {name!r}\n\n{usage(commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
