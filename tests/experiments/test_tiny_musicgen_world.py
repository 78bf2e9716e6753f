"""experiments/tiny_musicgen_world.py: the folder it writes reads back whole, three clips a track, every caption."""
import numpy as np

from divcfg.experiments.tiny_musicgen_world import RATE, TRACK_S, TRACKS, write_folder
from divcfg.world.user_folder import read_folder


def test_the_folder_reads_back_as_a_users_audiocraft_folder(tmp_path):
    captions = write_folder(tmp_path / "music", np.random.default_rng(0))
    read = read_folder(tmp_path / "music", captions, RATE, 1.0)
    assert not read.skipped and read.clips.shape == (TRACKS * int(TRACK_S), RATE)
    assert len(set(read.track)) == TRACKS and all(c[0].startswith("a ") for c in read.captions)
