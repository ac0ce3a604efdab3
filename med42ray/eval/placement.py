"""Where the evaluation's engine actors run: the one place that turns the config into Ray
resource requests and placement groups.

With ``eval.tensor_parallel_size`` 1 an actor asks for ``eval.gpus_per_actor`` GPUs and, when
``resources.accelerator_resource`` is set, that many units of it (one on CPU), which pins it
to the nodes that advertise it. With tensor parallelism ``tp > 1`` each actor gets a placement
group of its own: ``tp`` bundles packed on one node (``STRICT_PACK``), each holding one GPU (on
GPU) and one unit of the accelerator resource; bundle 0 also holds the actor's CPU. The actor
runs in bundle 0 with ``placement_group_capture_child_tasks``, and vLLM's Ray executor
(``distributed_executor_backend="ray"``) finds the group with
``ray.util.get_current_placement_group()`` (``vllm/v1/executor/ray_utils.py``) and starts one
worker per GPU bundle, each asking for that bundle's GPU: so on GPU the actor itself asks for no
GPU (a Transformers engine, which ignores tensor parallelism, takes bundle 0's). On CPU (the
cluster rehearsal, ``fake_gpu``) tensor parallelism is placement only: vLLM has no Ray executor
on CPU and the Transformers engine runs in the actor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from med42ray.config import EvalConfig, ResourcesConfig

if TYPE_CHECKING:
    from ray.util.placement_group import PlacementGroup

log = logging.getLogger(__name__)

#: How long to wait for a group's resources (an autoscaler may be starting GPU nodes).
GROUP_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Placement:
    """Per actor: what it asks for, and the bundles of its own placement group (or none)."""

    num_cpus: float
    num_gpus: float
    resources: dict[str, float] = field(default_factory=dict)
    bundles: list[dict[str, float]] | None = None
    strategy: str = "STRICT_PACK"

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "resources": dict(self.resources),
            "bundles": self.bundles,
            "strategy": self.strategy if self.bundles else None,
        }


def actor_placement(ev: EvalConfig, res: ResourcesConfig) -> Placement:
    """What each engine actor asks for under `ev` (eval) and `res` (resources)."""
    accel = res.accelerator_resource
    on_gpu = ev.gpus_per_actor > 0
    tp = ev.tensor_parallel_size
    if tp == 1:
        resources = {accel: ev.gpus_per_actor or 1} if accel else {}
        return Placement(num_cpus=1, num_gpus=ev.gpus_per_actor, resources=resources)
    bundles: list[dict[str, float]] = []
    for rank in range(tp):
        bundle: dict[str, float] = {"CPU": 1} if rank == 0 else {}
        if on_gpu:
            bundle["GPU"] = 1
        if accel:
            bundle[accel] = 1
        bundles.append(bundle or {"CPU": 1})
    if on_gpu:  # vLLM's workers take the bundles' GPUs; a Transformers engine bundle 0's
        return Placement(1, 1 if ev.engine == "hf" else 0, {}, bundles)
    return Placement(1, 0, {accel: 1} if accel else {}, bundles)


def create_groups(placement: Placement, n: int) -> list[PlacementGroup]:
    """`n` placement groups of `placement.bundles`, once all are ready (removed on failure)."""
    import ray
    from ray.util import placement_group, remove_placement_group

    assert placement.bundles, "no placement group without tensor parallelism"
    groups = [
        placement_group(placement.bundles, strategy=placement.strategy, name=f"med42ray-eval-{i}")
        for i in range(n)
    ]
    start = time.monotonic()
    try:
        pending = [g.ready() for g in groups]
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=30)
            waited = time.monotonic() - start
            if pending and waited > GROUP_TIMEOUT_S:
                raise TimeoutError(
                    f"{len(pending)} of {n} placement groups of {placement.bundles} "
                    f"({placement.strategy}) not ready after {waited:.0f}s: see `ray status`"
                )
            if pending:
                log.info("waiting for %d placement group(s) of %s", len(pending), placement.bundles)
    except BaseException:
        for g in groups:
            remove_placement_group(g)
        raise
    return groups


def actor_options(placement: Placement, group: PlacementGroup | None = None) -> dict[str, Any]:
    """`ray.remote` options of one actor: its resources, in bundle 0 of `group` when given."""
    options: dict[str, Any] = {
        "num_cpus": placement.num_cpus,
        "num_gpus": placement.num_gpus,
        "resources": dict(placement.resources),
    }
    if group is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=group,
            placement_group_bundle_index=0,
            placement_group_capture_child_tasks=True,
        )
    return options
