import json


def test_world_generate_times_each_worlds_base_against_the_first(tiny_world, tmp_path):
    """Both modes are timed; the first world is the ratios' baseline; the codec's shape is read from the world's own
    base policy."""
    from divcfg.experiments.world_generate import main
    out = tmp_path / "gen.json"
    assert main([str(tiny_world), "--batch", "2", "--repeats", "1", "--json", str(out)]) == 0
    got = json.loads(out.read_text())["worlds"]
    assert list(got) == [str(tiny_world)]
    row = got[str(tiny_world)]
    assert (row["codebooks"], row["card"], row["frames"]) == (4, 64, 50)
    assert row["nocfg"]["ratio_to_first"] == 1.0 and row["cfg3"]["ratio_to_first"] == 1.0
    assert row["nocfg"]["frames_per_s"] > 0 and row["cfg3"]["frames_per_s"] > 0
