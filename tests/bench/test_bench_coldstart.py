import pytest

from divcfg.bench.coldstart import PHASES, main, phases, run


def test_phases_follow_the_members_own_timestamps():
    # Created at 100; process up at 101; module imports 102 -> 110; __init__ 110.5 -> 111; weights 111.25 -> 111.5;
    # first call 112 -> 113; result at the driver at 113.5.
    startup = {"process_start": 101.0, "import_start": 102.0, "imported": 110.0, "init_start": 110.5, "built": 111.0,
               "weights_start": 111.25, "weights_end": 111.5, "first_call_start": 112.0, "first_call_end": 113.0}
    p = phases(100.0, 113.5, startup)
    assert p == {"worker_start": 1.0, "worker_boot": 1.0, "imports": 8.0, "init": 0.5, "weights": 0.5,
                 "first_call": 1.0, "other": 0.5 + 0.5 + 0.5}
    assert sum(p.values()) == pytest.approx(13.5)


def test_work_done_before_the_creation_call_counts_zero():
    # An idle worker started at 50 and imported torch (the preload hook) 60 -> 70, before the creation call at 100.
    startup = {"process_start": 50.0, "import_start": 60.0, "imported": 70.0, "init_start": 100.5, "built": 101.0,
               "first_call_start": 101.5, "first_call_end": 102.0}
    p = phases(100.0, 102.25, startup)
    assert p["worker_start"] == p["worker_boot"] == p["imports"] == p["weights"] == 0.0
    assert p["init"] == 0.5 and p["first_call"] == 0.5 and p["other"] == pytest.approx(1.25)


@pytest.mark.parametrize("args, words", [
    (["--n", "0"], "--n must be >= 1, got 0"),
    (["--settings", "cold,warm"], "unknown ['warm']"),
    (["--settle", "-1"], "--settle must be >= 0, got -1.0"),
])
def test_bad_arguments_are_named(args, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ray
def test_coldstart_on_the_tiny_world_phases_sum_to_the_total(tiny_world, tmp_path):
    results = run(str(tiny_world), n=1, settings=["cold"], settle_s=0.0, json_out=str(tmp_path / "cs.json"))
    by_name = {r["name"]: r for r in results}
    members = by_name["coldstart/run"]["members"]
    assert sorted(m["kind"] for m in members) == ["reward", "rollout"]
    for m in members:
        parts = [m[p] for p in PHASES]
        assert all(x >= 0 for x in parts), m
        assert sum(parts) <= m["total"] + 1e-6, m
        assert m["imports"] > 0, m  # no preload: the new worker imports torch after the creation call
    assert members[0]["weights"] > 0  # the rollout actor loaded the published snapshot
    assert by_name["coldstart/cold/rollout/total"]["value"] == members[0]["total"]
    assert (tmp_path / "cs.json").is_file()
