"""The elastic pool on a simulated multi-node cluster (``ray.cluster_utils.Cluster``: several raylets, one machine).

Rollout actors ask for the custom resource ``rollout_slot``, which only worker nodes offer, so each test decides
where actors can live: adding a node lets a pending actor start, removing one kills the actors on it. The head holds
the driver, the reward worker and the control actor.
"""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ray._private.authentication_test_utils import reset_auth_token_state

from divcfg.actors.rollout import remote_rollout_worker
from divcfg.job.books import PromptStream
from divcfg.job.control import set_target, start_control
from divcfg.job.loop import run_ray
from divcfg.job.pool import RayTopology
from divcfg.reward.worker import remote_reward_worker

sys.path.insert(0, str(Path(__file__).parent))
from test_loop_ray import PROMPTS, CodeHistogramJudges, TinyPolicy, make_learner  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]

DIVCFG = Path(sys.executable).with_name("divcfg")
# Ray declares a node dead after missed GCS health checks; these settings make that take about 1.5 s.
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                   "health_check_failure_threshold": 3}
# Upper bounds for the pool to reach a new target, measured from the `divcfg scale` call (which itself starts a
# Python process and joins the cluster). Growing includes a node joining and two actors importing torch. Measured on
# the 2 shared cores: 1 -> 3 in 53-57 s and 3 -> 1 in 7-14 s at load 4-8; 1 -> 3 took 145 s at load 12-20.
SCALE_UP_BOUND_S = 180.0
SCALE_DOWN_BOUND_S = 60.0
# No learner step may wait longer than this while the pool changes: training goes on throughout.
MAX_STEP_GAP_S = 30.0
SCENARIO_DEADLINE_S = 360.0


@pytest.fixture
def cluster(monkeypatch):
    """Head and nodes in this process's session. Token authentication is off here: this process read its auth mode
    when it imported Ray, and the head it starts must agree with it (tests/deploy/test_live_head.py covers tokens)."""
    import ray
    import test_loop_ray
    from ray.cluster_utils import Cluster
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # Ray caches the auth mode in-process (RayConfig): re-read it now, and again after the env is restored, or the
    # next Ray started by this process (another test) disagrees with its own GCS about tokens.
    reset_auth_token_state()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "_system_config": FAST_NODE_DEATH})
    ray.init(address=c.address, namespace="divcfg", log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(test_loop_ray)
    yield c
    ray.shutdown()
    c.shutdown()
    monkeypatch.undo()
    reset_auth_token_state()


def add_rollout_node(cluster, slots: int):
    return cluster.add_node(num_cpus=slots, resources={"rollout_slot": slots})


def topology(n_actors: int) -> RayTopology:
    rollout = remote_rollout_worker(0.5, 0).options(resources={"rollout_slot": 1})
    return RayTopology(rollout, remote_reward_worker(0.5, 0), n_actors, 1,
                       dict(policy_factory=TinyPolicy(), n_frames=4, group_size=2),
                       dict(judges_factory=CodeHistogramJudges))


class Recorder:
    """What the tests check after the run: step times, pool sizes, used prompt ids, events."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.steps: list[tuple[float, float, float, float]] = []  # (time, actors, generating, retiring)
        self.used: list[int] = []
        self.events: list[str] = []

    def step(self, batch, metrics) -> None:
        assert all(len(g) == 2 for g in batch.groups())  # never a group with a missing sample
        self.used.extend(int(p) for p in np.unique(batch.prompt_id))
        self.steps.append((time.perf_counter(), metrics["rollout/actors"], metrics["rollout/actors_generating"],
                           metrics["rollout/actors_retiring"]))

    def at(self, n: int) -> bool:
        _, actors, generating, retiring = self.steps[-1]
        return actors == generating == n and retiring == 0

    def steps_between(self, a: float, b: float) -> int:
        return sum(a <= t <= b for t, *_ in self.steps)

    def max_gap(self) -> float:
        times = [t for t, *_ in self.steps]
        return max(np.diff(times)) if len(times) > 1 else 0.0

    def expired(self) -> bool:
        return time.perf_counter() - self.t0 > SCENARIO_DEADLINE_S


def scale_cli(address: str, run: str, n: int) -> subprocess.Popen:
    """`divcfg scale` in its own process, as an operator would run it."""
    return subprocess.Popen([str(DIVCFG), "scale", "--actors", str(n), "--run", run, "--address", address],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def check_books(acct, stream: PromptStream, rec: Recorder) -> None:
    assert len(rec.used) == len(set(rec.used)), "a prompt group was used twice"
    assert acct.generated == acct.used + acct.stale + acct.dropped
    assert stream.position == acct.generated + acct.unfinished  # each drawn prompt generated once, or still waiting
    assert acct.used == len(rec.used)


def test_scale_1_to_3_to_1_while_training(cluster):
    import ray
    add_rollout_node(cluster, 2)  # room for two actors: the third waits for a node
    control = start_control("cluster-scale", 1)
    topo, stream, rec = topology(1), PromptStream(PROMPTS * 8, 0), Recorder()
    state = {"phase": "warm"}
    marks: dict[str, float] = {}
    procs = []

    def on_step(i, batch, metrics, acct):
        rec.step(batch, metrics)
        now = time.perf_counter()
        phase = state["phase"]
        if phase == "warm" and i >= 2 and rec.at(1):
            marks["up"] = now
            procs.append(scale_cli(cluster.address, "cluster-scale", 3))
            state["phase"] = "up"
        elif phase == "up" and "node" not in marks and metrics["rollout/actors"] == 3 and \
                metrics["rollout/actors_generating"] == 2:
            # Two actors run and the third is pending for lack of a node: a node joins, and it starts.
            marks["node"] = now
            add_rollout_node(cluster, 1)  # Ray starts a node from the main thread only; this step waits for it
        elif phase == "up" and rec.at(3):
            marks["at3"] = now
            marks["down"] = now
            procs.append(scale_cli(cluster.address, "cluster-scale", 1))
            state["phase"] = "down"
        elif phase == "down" and rec.at(1):
            marks["at1"] = now
            state["phase"] = "after"
        elif phase == "after" and now - marks["at1"] > 2.0:
            return True
        return rec.expired()

    acct = run_ray(make_learner(), topo, stream, steps=100_000, batch_prompts=2, group_size=2, max_lag=2,
                   mode="async", queue_groups=0, on_step=on_step, on_event=rec.events.append,
                   target=lambda: ray.get(control.get_target.remote()))
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "job cluster-scale: rollout actors -> 3" in outputs[0]
    assert state["phase"] == "after", (state, marks, rec.steps[-1], rec.events)
    up_s, down_s = marks["at3"] - marks["up"], marks["at1"] - marks["down"]
    print(f"\npool 1 -> 3: {up_s:.1f} s (node joined {marks['node'] - marks['up']:.1f} s after the request); "
          f"3 -> 1: {down_s:.1f} s; longest step gap {rec.max_gap():.2f} s; steps {len(rec.steps)}")
    assert up_s < SCALE_UP_BOUND_S and down_s < SCALE_DOWN_BOUND_S
    assert marks["up"] < marks["node"] < marks["at3"]  # the third actor only started once the node joined
    assert rec.steps_between(marks["up"], marks["at3"]) >= 1 and rec.steps_between(marks["down"], marks["at1"]) >= 1
    assert rec.max_gap() < MAX_STEP_GAP_S
    assert any("1 -> 3" in e for e in rec.events) and any("3 -> 1" in e for e in rec.events)
    assert any("rollout pool at 3 actors, all generating" in e for e in rec.events), rec.events
    assert len(topo.actors) == 1
    check_books(acct, stream, rec)


def test_node_loss_keeps_training_on_what_remains(cluster):
    import ray
    doomed = add_rollout_node(cluster, 2)
    add_rollout_node(cluster, 1)
    control = start_control("cluster-loss", 3)
    topo, stream, rec = topology(3), PromptStream(PROMPTS * 8, 0), Recorder()
    state = {"phase": "warm"}
    marks: dict[str, float] = {}

    def on_step(i, batch, metrics, acct):
        rec.step(batch, metrics)
        now = time.perf_counter()
        phase = state["phase"]
        if phase == "warm" and i >= 2 and rec.at(3):
            marks["loss"] = now
            cluster.remove_node(doomed, allow_graceful=False)  # its raylet and actor processes are killed
            state["phase"] = "lost"
        elif phase == "lost" and acct.failures.get("rollout", 0) == 2:
            marks["detected"] = now
            state["phase"] = "degraded"
        elif phase == "degraded" and rec.steps_between(marks["detected"], now) >= 3:
            # The two replacements wait for a node that never comes; the operator scales to what is left.
            marks["down"] = now
            set_target("cluster-loss", 1)
            state["phase"] = "down"
        elif phase == "down" and rec.at(1):
            marks["at1"] = now
            return True
        return rec.expired()

    acct = run_ray(make_learner(), topo, stream, steps=100_000, batch_prompts=2, group_size=2, max_lag=2,
                   mode="async", queue_groups=0, on_step=on_step, on_event=rec.events.append,
                   target=lambda: ray.get(control.get_target.remote()))
    assert "at1" in marks, (state, marks, rec.steps[-1], rec.events)
    print(f"\nnode loss noticed after {marks['detected'] - marks['loss']:.1f} s; "
          f"{rec.steps_between(marks['detected'], marks['down'])} steps on the surviving actor; "
          f"pool at 1 {marks['at1'] - marks['down']:.1f} s after scaling down; requeued {acct.requeued}")
    # Both actors of the lost node failed once each; the surviving one kept the learner going.
    assert acct.failures == {"rollout": 2}
    degraded = [s for s in rec.steps if marks["detected"] <= s[0] <= marks["down"]]
    assert len(degraded) >= 3 and all(generating == 1 for _, _, generating, _ in degraded)
    assert marks["at1"] - marks["down"] < SCALE_DOWN_BOUND_S
    assert rec.max_gap() < MAX_STEP_GAP_S
    # The lost groups and the abandoned ones of the pending replacements went back to the queue.
    assert acct.requeued >= 2
    check_books(acct, stream, rec)
