"""The running job's control actor: the rollout pool's target size, set by ``divcfg scale`` and polled by the job.

The job registers a named actor (namespace ``divcfg``, name ``divcfg-control-<run name>``) that holds the target
count; :class:`AutoscaleRequest` turns each new target into a request to Ray's autoscaler.
"""
from __future__ import annotations

NAMESPACE = "divcfg"
PREFIX = "divcfg-control-"


class PoolControl:
    """The target size of the rollout pool, plus the scaling requests it received."""

    def __init__(self, target: int):
        self.target = target
        self.requests: list[int] = []

    def set_target(self, n: int) -> int:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"actor count must be a non-negative integer, got {n!r}")
        self.target = n
        self.requests.append(n)
        return n

    def get_target(self) -> int:
        return self.target


class AutoscaleRequest:
    """Turns the pool's target into a resource request for Ray's autoscaler.

    ``__call__(target)`` clamps the target to ``[lo, hi]`` and, when the clamped value changed, asks
    ``request_fn`` (``ray.autoscaler.sdk.request_resources``) for one ``actor_bundle`` per actor plus the
    ``fixed_bundles`` (reward workers), so the autoscaler adds nodes as soon as the target grows instead of waiting
    for pending actors to show up in its demand. The request replaces the previous one, so a smaller target lets
    idle nodes go. ``on_event`` hears about each request and each clamp.
    """

    def __init__(self, lo: int, hi: int, actor_bundle: dict, fixed_bundles: list[dict], request_fn=None,
                 on_event=None):
        if not 0 <= lo <= hi or hi < 1:
            raise ValueError(f"autoscale needs 0 <= min <= max and max >= 1, got min={lo} max={hi}")
        if request_fn is None:
            from ray.autoscaler.sdk import request_resources as request_fn
        self.lo, self.hi, self.actor_bundle, self.fixed = lo, hi, _bundle(actor_bundle), [_bundle(b) for b in fixed_bundles]
        self.request_fn, self.on_event = request_fn, on_event or (lambda text: None)
        self.requested: int | None = None
        self._last_target: int | None = None

    def __call__(self, target: int) -> int:
        clamped = min(max(target, self.lo), self.hi)
        if clamped != target and target != self._last_target:
            self.on_event(f"target {target} actors is outside autoscale [{self.lo}, {self.hi}]: using {clamped}")
        self._last_target = target
        if clamped != self.requested:
            self.request_fn(bundles=[dict(self.actor_bundle) for _ in range(clamped)] + [dict(b) for b in self.fixed])
            self.on_event(f"autoscaler asked for {clamped} rollout actor bundles {self.actor_bundle}"
                          + (f" plus {len(self.fixed)} reward worker bundles" if self.fixed else ""))
            self.requested = clamped
        return clamped


def _bundle(resources: dict) -> dict:
    """A resource bundle without zero entries: a CPU-only actor asks for no ``GPU`` key at all."""
    return {k: v for k, v in resources.items() if v}


def control_name(run_name: str) -> str:
    return PREFIX + run_name


def start_control(run_name: str, target: int):
    """Create (or take over) the job's control actor. It is owned by the driver and dies with the job."""
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    # Pinned to the driver's node: anywhere else, losing that node would take the scaling control (and the run,
    # which polls it) down while the driver is still healthy.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    # Polled every step: its calls' task events would pile up in the GCS as the members' would (actors/rollout.py).
    actor = ray.remote(num_cpus=0, enable_task_events=False)(PoolControl).options(
        name=control_name(run_name), namespace=NAMESPACE, get_if_exists=True, scheduling_strategy=here).remote(target)
    ray.get(actor.set_target.remote(target))
    return actor


def running_jobs() -> list[str]:
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
    return sorted(a["name"][len(PREFIX):] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a.get("namespace") == NAMESPACE and a["name"].startswith(PREFIX))


def set_target(run_name: str | None, n: int) -> str:
    """Set the target of a running job (this process must already be connected to its cluster)."""
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
    if n < 0:
        raise ValueError(f"--actors must be >= 0, got {n}")
    jobs = running_jobs()
    if run_name is None:
        if not jobs:
            raise ValueError("no divcfg job is running on this cluster")
        if len(jobs) > 1:
            raise ValueError(f"{len(jobs)} divcfg jobs run on this cluster {jobs}; name one with --run")
        run_name = jobs[0]
    try:
        actor = ray.get_actor(control_name(run_name), namespace=NAMESPACE)
    except ValueError:
        raise ValueError(f"no running divcfg job named {run_name!r} on this cluster (running: {jobs or 'none'})") from None
    ray.get(actor.set_target.remote(n))
    return run_name
