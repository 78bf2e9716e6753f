import pytest

from divcfg.bench.chaos import main, recovery_s, run


class FakeTopology:
    def __init__(self, replaced_by, ready_at):
        self.replaced_by, self.ready_at = replaced_by, ready_at


def test_recovery_follows_replacements_that_died_before_their_first_result():
    # a was killed at t=10; its replacement b died while starting; c, which replaced b, returned a result at t=17.5.
    topo = FakeTopology({"a": "b", "b": "c"}, {"a": 1.0, "c": 17.5})
    assert recovery_s(topo, {"member": "a", "t": 10.0}) == pytest.approx(7.5)
    assert recovery_s(FakeTopology({"a": "b"}, {"a": 1.0}), {"member": "a", "t": 10.0}) is None  # b still starting
    assert recovery_s(FakeTopology({}, {"a": 1.0}), {"member": "a", "t": 10.0}) is None  # death not noticed yet


@pytest.mark.parametrize("args, words", [
    (["--kills", "0"], "--kills must be >= 1, got 0"),
    (["--kill-every", "0"], "--kill-every must be > 0, got 0.0"),
    (["--steps-before", "1"], "--steps-before must be >= 2, got 1"),
    (["--spares", "-1"], "--spares must be distinct numbers >= 0, got '-1'"),
    (["--spares", "0,x"], "--spares must be integers separated by commas, got '0,x'"),
    (["--spares", "1,1"], "--spares must be distinct numbers >= 0, got '1,1'"),
])
def test_bad_arguments_are_named(args, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ray
def test_short_chaos_run_loses_nothing(tiny_world, tmp_path):
    results = {r["name"]: r for r in run(str(tiny_world), kills=3, kill_every=2.0, steps_before=2, steps_after=1,
                                         json_out=str(tmp_path / "chaos.json"))}
    assert results["chaos/kills"]["value"] == 3 and results["chaos/recovered"]["met"]
    for name in ("groups_lost", "groups_duplicated", "partial_groups_at_learner"):
        assert results[f"chaos/{name}"]["value"] == 0, results[f"chaos/{name}"]
    books = results["chaos/groups_lost"]["books"]
    assert books["generated"] == books["used"] + books["stale"] + books["dropped"]
    assert sum(books["failures"].values()) == 3  # each kill noticed once
    assert results["chaos/samples_per_s_after"]["value"] > 0
    assert (tmp_path / "chaos.json").is_file()


def test_compare_names_each_setting_and_takes_ratios_against_the_first(monkeypatch, tmp_path):
    import divcfg.bench.chaos as chaos

    def fake_run(world, spares, **kw):  # what run() returns, trimmed to the figures compare reads
        median, kept = {0: (20.0, 0.2), 1: (2.0, 0.8)}[spares]
        return [chaos._entry("recovery_median", median, "s"),
                chaos._entry("throughput_kept_during_kills", kept, "ratio")]
    monkeypatch.setattr(chaos, "run", fake_run)
    out = {r["name"]: r for r in chaos.compare("w", [0, 1], json_out=str(tmp_path / "c.json"), kills=3)}
    assert out["chaos/spares=0/recovery_median"]["value"] == 20.0
    assert out["chaos/spares=1/recovery_median"]["value"] == 2.0
    assert out["chaos/spares=1_against_0/recovery_median"]["ratio"] == pytest.approx(0.1)
    assert out["chaos/spares=1_against_0/throughput_kept_during_kills"]["ratio"] == pytest.approx(4.0)
    assert (tmp_path / "c.json").is_file()
