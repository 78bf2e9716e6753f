"""What a job does with its ``world.dir``: uses the world there, builds it first where that is safe, or says why not
(``divcfg train``, and the benchmarks that train)."""
from __future__ import annotations

import os
import sys

from divcfg.common.data.world_dir import WORLD_VERSION, World, WorldError
from divcfg.world import build


def ensure_world(root: str | os.PathLike, size: str, seed: int = 0, progress: bool = True,
                 kind: str = "procedural", build_missing: bool = True) -> World:
    """The world in ``root``, built first as ``kind`` (with progress shown) when it is missing or unfinished.
    ``build_missing=False`` (a MusicGen job, whose world is a folder of the user's music that only ``divcfg world
    build --kind folder`` can make): a missing world is an error naming that command. A directory that holds other
    files and no world is never built into: it is more likely the user's music than a world."""
    world = World(root)
    if world.root.exists() and not world.root.is_dir():
        raise WorldError(f"world.dir={root} is a file, not a world directory")
    found = world.state().get("identity", {}).get("version")
    if found is not None and found != WORLD_VERSION:
        raise WorldError(f"world in {root} is version {found}; this divcfg needs version {WORLD_VERSION}. "
                         f"Delete it (or point world.dir elsewhere) and it will be rebuilt")
    if not world.is_built():
        held = sorted(p.name for p in world.root.iterdir()) if world.root.is_dir() else []
        listed = ", ".join(held[:6]) + (", ..." if len(held) > 6 else "")
        if not build_missing:
            there = ("its build is unfinished" if world.state_file.is_file() else f"it holds {listed}" if held
                     else "it is empty" if world.root.is_dir() else "it does not exist")
            raise WorldError(f"world.dir={root} holds no built world ({there}); a MusicGen job trains on a folder "
                             f"world built for its model: `divcfg world build --kind folder --audio MUSIC_DIR "
                             f"--captions FILE --model MUSICGEN_DIR --out {root}`")
        if held and not world.state_file.is_file():
            raise WorldError(f"world.dir={root} holds no divcfg world but other files ({listed}), which train leaves "
                             f"alone: point world.dir at a built world, or at a new or empty directory to build a "
                             f"{kind} world there")
        print(f"world {kind} {size} not found in {root}: building it first", file=sys.stderr)
        build.build_world(root, size, seed, progress=progress, kind=kind)
    world.verify()  # a stage's file deleted since the build: names the stage to rebuild
    return world
