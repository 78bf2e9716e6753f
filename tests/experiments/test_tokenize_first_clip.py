import re

import divcfg.codec.tokenize as tokenize
from divcfg.experiments.tokenize_first_clip import main


def test_both_sides_are_timed_and_the_reader_is_put_back(tiny_world, capsys):
    reader = tokenize.read_audio_folder
    assert main(["--codec", str(tiny_world / "codec"), "--files", "2", "--file-seconds", "4", "--seconds", "0.5",
                 "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"first clip +\d+ clips/s", out) and re.search(r"whole files +\d+ clips/s", out)
    assert re.search(r"speed-up \d+\.\d\dx \(medians of 1\)", out)
    assert tokenize.read_audio_folder is reader
