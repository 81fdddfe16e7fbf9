"""Where a task goes: the client's routing rules, as pure functions over node views.

A :class:`NodeView` is what the client knows of one node: the models its last status
said were loaded (with their queues and memory), the GPU memory it has, and the tasks
this client has in flight there.  :func:`choose_replica` picks among the nodes where a
model is warm; :func:`choose_placement` ranks the nodes for a model that needs one more
replica.  No Ray here, so the rules are tested without a cluster.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional

__all__ = ["NodeView", "WARM_STATES", "choose_replica", "choose_placement", "model_mb_hint"]

WARM_STATES = ("loading", "ready", "waiting_for_memory")
"""Model states that count as a replica: the model is there or about to be."""
HOLDING_STATES = WARM_STATES + ("draining",)
"""Model states whose memory counts as used."""

_MEM_MB = re.compile(r"[?&]mem_mb=(\d+)")


def model_mb_hint(model_name: str) -> Optional[float]:
    """The memory a synthetic test model says it takes (its ``mem_mb`` option), else None."""
    if model_name.startswith("synthetic/"):
        m = _MEM_MB.search(model_name)
        if m:
            return float(m.group(1))
    return None


class NodeView:
    """One node as the client sees it.

    Attributes:
        node_id: the Ray node id (hex).
        models: model name -> its status dict from the node (``state``, ``queue_depth``,
            ``in_flight``, ``memory_bytes``, ``devices`` ...), from the last poll.
        gpus_mb: GPU memory per GPU in MiB when known (fake GPUs, or the memory policy's
            numbers), else None.
        outstanding: tasks this client has sent there and not yet heard back from.
        own: model name -> this client's outstanding tasks of that model there.
        assigned: models this client routed there since the last poll could show them.
    """

    __slots__ = ("node_id", "models", "gpus_mb", "outstanding", "own", "assigned")

    def __init__(self, node_id: str, models: Optional[Dict[str, dict]] = None,
                 gpus_mb: Optional[List[int]] = None):
        self.node_id = node_id
        self.models: Dict[str, dict] = models or {}
        self.gpus_mb = gpus_mb
        self.outstanding = 0
        self.own: Dict[str, int] = {}
        self.assigned: Dict[str, float] = {}

    def is_warm(self, model: str) -> bool:
        m = self.models.get(model)
        return (m is not None and m.get("state") in WARM_STATES) or model in self.assigned

    def model_load(self, model: str) -> int:
        """Queued + running tasks of ``model`` here: the node's last report, or this
        client's own count when that is larger (the report may predate them)."""
        m = self.models.get(model)
        polled = (m.get("queue_depth", 0) + m.get("in_flight", 0)) if m else 0
        return max(polled, self.own.get(model, 0))

    def load(self) -> int:
        """Queued + running tasks of every model here (same rule as :meth:`model_load`)."""
        polled = sum(m.get("queue_depth", 0) + m.get("in_flight", 0) for m in self.models.values())
        return max(polled, self.outstanding)

    def gpu_used_mb(self, busy_only: bool = False) -> float:
        used = 0.0
        for m in self.models.values():
            if m.get("state") not in HOLDING_STATES:
                continue
            devs = m.get("devices") or []
            if not any(str(d).startswith("cuda") for d in devs):
                continue
            if busy_only and not (m.get("queue_depth", 0) or m.get("in_flight", 0)):
                continue
            by_dev = m.get("memory_bytes_by_device")  # the memory policy's numbers
            if by_dev:
                used += sum(v for k, v in by_dev.items() if str(k).startswith("cuda")) / 2**20
            else:
                used += (m.get("memory_bytes") or 0) / 2**20
        return used

    def gpu_free_mb(self) -> Optional[float]:
        if self.gpus_mb is None:
            return None
        return sum(self.gpus_mb) - self.gpu_used_mb()


def choose_replica(nodes: Iterable[NodeView], model: str) -> List[NodeView]:
    """The nodes where ``model`` is warm, shortest queue first (ties: least loaded node)."""
    warm = [n for n in nodes if n.is_warm(model)]
    warm.sort(key=lambda n: (n.model_load(model), n.load(), n.node_id))
    return warm


def choose_placement(nodes: Iterable[NodeView], model: str, device: str,
                     model_mb: Optional[float]) -> List[NodeView]:
    """Nodes for a new replica of ``model``, best first:

    0. it fits in the free GPU memory (CPU models: any node), most free memory first;
    1. it fits once idle models are evicted (no busy model is evicted);
    2. the rest, least loaded first.

    ``model_mb`` is the model's size when known (learned from a node that loaded it, or a
    synthetic model's ``mem_mb``); unknown, a node with any free memory counts as class 0.
    Within a class: more free memory, then fewer tasks, then fewer models.
    """
    ranked = []
    gpu = device != "cpu"
    for n in nodes:
        free = n.gpu_free_mb() if gpu else None
        if not gpu or free is None or (n.gpus_mb is not None and not n.gpus_mb):
            cls = 0  # CPU, unknown memory, or a node without GPUs (the model runs on its CPU)
            room = 0.0
        else:
            room = free
            need = model_mb if model_mb is not None else 0.0
            if (model_mb is None and free > 0) or (model_mb is not None and need <= free):
                cls = 0
            elif need <= sum(n.gpus_mb) - n.gpu_used_mb(busy_only=True):
                cls = 1
            else:
                cls = 2
        ranked.append((cls, -room if cls < 2 else 0.0, n.load(), len(n.models), n.node_id, n))
    ranked.sort(key=lambda r: r[:5])
    return [r[-1] for r in ranked]
