import json

import pytest

from divcfg.bench.soak import _label, growth, main, run


def _sample(t, driver, member=None, store=100):
    rss = {"driver:1": driver, **({"ray::RolloutWorker:7": member} if member is not None else {})}
    return {"t": t, "rss": rss, "object_store": store}


def test_growth_compares_the_first_and_last_three_samples_after_the_mark():
    samples = [_sample(0, 999), _sample(10, 100, 50), _sample(20, 110, 50), _sample(30, 90, 60),
               _sample(40, 120, None), _sample(50, 130, None), _sample(60, 125, None, store=300)]
    g = growth(samples, mark_s=10)
    # driver: median(100, 110, 90) = 100 -> median(120, 130, 125) = 125; the sample before the mark is ignored.
    assert g["driver:1"]["ratio"] == pytest.approx(1.25)
    assert g["driver:1"]["statistic"] == "median of 3"
    # store: its floor, min over the first and the last 6 samples after the mark: 100 -> 100.
    assert g["object_store"]["ratio"] == pytest.approx(1.0)
    assert "ray::RolloutWorker:7" not in g  # killed before the end: not a long-lived process


def test_the_object_store_is_judged_by_its_floor_not_by_snapshots_in_flight():
    # One resident snapshot (2) with one to three more in flight at any sample: the swings are not growth.
    swings = [2, 4, 6, 2, 8, 4, 2, 4, 2, 6, 8, 2, 4]
    g = growth([_sample(10 * i, 100, store=v) for i, v in enumerate(swings)], mark_s=0)
    assert g["object_store"]["ratio"] == pytest.approx(1.0)
    assert g["object_store"]["statistic"] == "minimum of 6"
    # A leak raises the floor: one more snapshot held from the middle on doubles it.
    leaking = swings[:6] + [v + 2 for v in swings[6:]]
    g = growth([_sample(10 * i, 100, store=v) for i, v in enumerate(leaking)], mark_s=0)
    assert g["object_store"]["ratio"] == pytest.approx(2.0)
    # An empty store at both ends is no growth; empty, then not, has no ratio.
    assert growth([_sample(0, 1, store=0), _sample(10, 1, store=0)], 0)["object_store"]["ratio"] == 1.0
    empty_then_not = [_sample(10 * i, 1, store=0 if i < 6 else 5) for i in range(12)]
    assert growth(empty_then_not, 0)["object_store"]["ratio"] is None


def test_process_labels():
    assert _label(["ray::RolloutWorker.generate_groups()"]) == "ray::RolloutWorker"
    assert _label(["/x/ray/core/src/ray/raylet/raylet", "--flag"]) == "raylet"
    assert _label(["/venv/bin/python3", "-u", "/x/ray/_private/log_monitor.py", "--a"]) == "log_monitor.py"


@pytest.mark.parametrize("args, words", [
    (["--minutes", "0"], "--minutes must be > 0, got 0.0"),
    (["--kill-every", "-1"], "--kill-every must be > 0, got -1.0"),
    (["--minutes", "2", "--warmup", "2"], "--warmup must be >= 0 and less than --minutes (2.0), got 2.0"),
])
def test_bad_arguments_are_named(args, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ray
def test_short_soak_writes_samples_and_a_plot(tiny_world, tmp_path):
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    results = {r["name"]: r for r in run(str(tiny_world), minutes=0.5, kill_every=10, resize_every=15,
                                         sample_every=3, warmup_minutes=0.1, json_out=str(out), png_out=str(png))}
    assert results["soak/groups_lost"]["value"] == 0 and results["soak/books_balanced"]["value"] is True
    assert results["soak/thread_errors"]["value"] == 0, results["soak/thread_errors"]["errors"]
    samples = results["soak/run"]["samples"]
    assert len(samples) >= 5 and all(any(k.startswith("driver:") for k in s["rss"]) for s in samples)
    assert any(k.startswith("ray::RewardWorker") for s in samples for k in s["rss"])
    assert json.loads(out.read_text())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
