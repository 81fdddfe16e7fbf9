"""ClusterModelManager: ModelManager's API over a Ray cluster, one node manager per node.

The client keeps, per model, a local queue of tasks not yet sent.  A dispatcher runs once
per event-loop iteration in which something changed (a task arrived, a batch came back):
for each model it picks a node (:mod:`.routing`), takes as many queued tasks as that
node's in-flight budget allows (``max_in_flight``) in batches of at most ``max_batch``,
and sends each batch as one actor call.  So a burst of 100,000 tasks becomes a few
hundred Ray calls at a time, and the rest wait here, not in Ray.

Node state is polled, not pushed: every ``status_interval`` seconds the client asks each
node manager for its status and Ray for the live nodes.  Polling needs no channel from the
actors back to each client (clients come and go; node managers are shared), and what
routing needs between polls -- this client's own in-flight tasks per node and model, and
the models it has just placed -- the client counts itself, exactly and at once.

Faults: a batch whose actor call fails because the node manager died (actor killed, node
removed) puts its unanswered tasks back at the front of their queue, marked with the lost
node; they go once more to another node, and if that is lost too (or there is none) they
complete with ``NODE_LOST``.  Every task has an id (``<client>-<n>``) carried to the node
manager and back; a task's future is resolved once, and ``status()["tasks"]
["double_completions"]`` counts any second answer (it stays 0).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
import uuid
from collections import deque
from typing import Any, AsyncIterator, Callable, Deque, Dict, List, Optional

from ..manager import StreamError
from ..result import ErrorInfo, Result
from ..settings import ModelManagerSettings
from .node import NodeManager
from .routing import NodeView, choose_placement, choose_replica, model_mb_hint

__all__ = ["ClusterModelManager", "NODE_LOST", "NO_CAPACITY", "connect"]

logger = logging.getLogger("pymodelmgr.cluster")

NODE_LOST = "NODE_LOST"
"""Error code: the node running the task was lost, and so was the one it was re-sent to
(or there was no other)."""
NO_CAPACITY = "NO_CAPACITY"
"""Error code: no live node can take the task (no node, or none with ``node_resource``)."""

_LOOPBACK = ("127.0.0.1", "localhost", "::1")

REVIVE_AFTER = 5.0
"""Seconds a node whose node manager died stays out of routing (Ray may not have declared
a removed node dead yet); after that, if Ray lists it alive, a new node manager starts
there on demand."""


def _import_ray():
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "pymodelmgr.cluster needs Ray, which is not installed: "
            "pip install 'pymodelmgr[ray]' (or pip install ray)") from exc
    return ray


def _no_cluster(address, exc) -> ConnectionError:
    return ConnectionError(
        f"cannot connect to the Ray cluster at address={address!r}: {exc}. Start one with "
        "`ray start --head` (see README, 'Scaling out over Ray') or pass the head node's "
        "host:port")


def connect(address: Optional[str] = "auto", **kwargs: Any) -> None:
    """``ray.init`` for a client: fails fast with ConnectionError naming the address when
    nothing listens there, and keeps a loopback address on loopback (Ray would otherwise
    replace 127.0.0.1 by this machine's outward address before connecting).  Extra
    ``kwargs`` go to ``ray.init`` (``log_to_driver`` defaults to False)."""
    ray = _import_ray()
    host = None
    if address not in (None, "auto", "local"):
        if not isinstance(address, str) or ":" not in address:
            raise ValueError(f'address must be "auto" or "host:port", got {address!r}')
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise _no_cluster(address, exc) from exc
    kwargs.setdefault("log_to_driver", False)
    saved = None
    if host in _LOOPBACK:
        kwargs.setdefault("_node_ip_address", "127.0.0.1")
        from ray._private import ray_constants
        saved = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False  # get_node_ip_address() -> loopback
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        raise _no_cluster(address, exc) from exc
    finally:
        if saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved


class _Task:
    __slots__ = ("id", "item", "fut", "model", "device", "replicas", "lost_on", "node",
                 "cancelled", "avoid", "fallback")

    def __init__(self, tid, item, fut, model, device, replicas):
        self.id = tid
        self.item = item
        self.fut = fut
        self.model = model
        self.device = device
        self.replicas = replicas
        self.lost_on: Optional[str] = None
        self.avoid: Optional[str] = None  # a node that had no memory for the model
        self.fallback: Optional[Result] = None  # its answer, if no other node can try
        self.node: Optional[str] = None
        self.cancelled = False


class _Node(NodeView):
    __slots__ = ("actor", "alive", "resources", "polled_at", "stats", "lost_at")

    def __init__(self, node_id: str):
        super().__init__(node_id)
        self.actor = None
        self.alive = True
        self.resources: Dict[str, float] = {}
        self.polled_at = 0.0
        self.stats: Dict[str, Any] = {}
        self.lost_at = 0.0


class ClusterModelManager:
    """ModelManager's API over the nodes of a Ray cluster.

    Each node runs one node manager (a Ray actor pinned to it, created on first need and
    shared by every client in ``namespace``) that owns a :class:`~pymodelmgr.ModelManager`
    over that node's GPUs and CPUs.  ``task()`` goes to a node where the model is warm
    (shortest queue first), else to a node where it fits without evicting a busy model,
    else to the least loaded node.  Results are the same :class:`~pymodelmgr.Result`, with
    ``data["node"]`` naming the node; errors add ``NODE_LOST`` and ``NO_CAPACITY``.

    Args:
        address: the Ray cluster (``"auto"``: the one this machine runs or
            ``RAY_ADDRESS``; ``"host:port"`` of a head node).  Ignored when Ray is already
            initialised in this process (e.g. inside a Ray Serve replica).
        settings: :class:`~pymodelmgr.ModelManagerSettings` (or a dict) for the node
            managers this client creates; a node manager that already runs keeps its own.
        namespace: the Ray namespace of the node managers.
        node_resource: only nodes declaring this custom resource get a node manager
            (None: every node).
        max_in_flight: tasks this client has in flight per node; more wait here.
        max_batch: tasks per actor call.
        status_interval: seconds between polls of the nodes' status.
        ray_init_kwargs: extra ``ray.init`` arguments.
    """

    def __init__(self, address: Optional[str] = "auto",
                 settings: Optional[ModelManagerSettings | Dict[str, Any]] = None, *,
                 namespace: str = "pymodelmgr", node_resource: Optional[str] = None,
                 max_in_flight: int = 2048, max_batch: int = 256,
                 status_interval: float = 1.0,
                 ray_init_kwargs: Optional[Dict[str, Any]] = None):
        ray = _import_ray()
        if not isinstance(settings, (ModelManagerSettings, dict, type(None))):
            raise TypeError("settings must be a ModelManagerSettings, a dict, or None")
        settings = ModelManagerSettings.model_validate(settings or {})
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be a positive int, got {max_in_flight!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        self.settings = settings
        self._ray = ray
        self._namespace = namespace
        self._node_resource = node_resource
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._status_interval = float(status_interval)
        self._owns_ray = False
        if not ray.is_initialized():
            self._connect(address, dict(ray_init_kwargs or {}))
        from ray.exceptions import RayActorError
        failures = [RayActorError]
        for name in ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
                     "ActorUnschedulableError"):
            exc = getattr(ray.exceptions, name, None)
            if exc is not None:
                failures.append(exc)
        self._node_failures = tuple(failures)
        self._remote_cls = ray.remote(NodeManager)
        self._settings_dict = settings.model_dump()
        self._aliases = dict(settings.model_aliases)
        self._client_id = uuid.uuid4().hex[:12]
        self._seq = itertools.count(1)
        self._nodes: Dict[str, _Node] = {}
        self._pending: Dict[str, Deque[_Task]] = {}
        self._inflight: Dict[str, _Task] = {}
        self._replicas: Dict[str, int] = {}
        self._model_mb: Dict[str, float] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._dispatch_scheduled = False
        self._poller: Optional[asyncio.Task] = None
        self._nodes_at = 0.0
        self._first_poll: Optional[asyncio.Task] = None
        self._closed = False
        self._counts = {"submitted": 0, "completed": 0, "resubmitted": 0, "node_lost": 0,
                        "double_completions": 0, "calls": 0, "nodes_lost": 0,
                        "rerouted": 0}

    # ---- connecting -------------------------------------------------------------

    def _connect(self, address, kwargs) -> None:
        connect(address, **kwargs)
        self._owns_ray = True

    # ---- nodes ------------------------------------------------------------------

    async def _refresh_nodes(self) -> None:
        loop = asyncio.get_running_loop()
        infos = await loop.run_in_executor(None, self._ray.nodes)
        seen = set()
        new: List[_Node] = []
        for info in infos:
            nid = info["NodeID"]
            if not info.get("Alive"):
                continue
            res = info.get("Resources") or {}
            if self._node_resource is not None and self._node_resource not in res:
                continue
            seen.add(nid)
            n = self._nodes.get(nid)
            if n is None:
                n = self._nodes[nid] = _Node(nid)
                new.append(n)
            n.resources = res
            if not n.alive and time.monotonic() - n.lost_at > REVIVE_AFTER:
                n.alive = True  # its node manager died but the node lives: a new one on demand
        for nid, n in self._nodes.items():
            if nid not in seen and n.alive:
                self._node_failed(n, "the node left the cluster")
        for n in new:  # a node manager another client (or an earlier run) started
            n.actor = await loop.run_in_executor(None, self._existing_actor, n.node_id)
        self._nodes_at = time.monotonic()

    def _existing_actor(self, node_id: str):
        try:
            return self._ray.get_actor(f"pymodelmgr-node-{node_id}", namespace=self._namespace)
        except ValueError:
            return None

    def _actor(self, n: _Node):
        if n.actor is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            n.actor = self._remote_cls.options(
                name=f"pymodelmgr-node-{n.node_id}", namespace=self._namespace,
                lifetime="detached", get_if_exists=True, num_cpus=0, max_restarts=0,
                max_task_retries=0, max_concurrency=10_000,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False),
            ).remote(self._settings_dict, n.node_id)
        return n.actor

    def _apply_status(self, n: _Node, st: Dict[str, Any]) -> None:
        models = {}
        for m in st.get("models", []):
            name = m["model_name"]
            models[name] = m
            if m.get("memory_bytes"):
                self._model_mb[name] = m["memory_bytes"] / 2**20
        n.models = models
        n.gpus_mb = st.get("gpus_mb")
        n.stats = st
        # A model placed here counts as warm until a poll sent after it shows it.
        for name, at in list(n.assigned.items()):
            if at < n.polled_at and (name in models or not n.own.get(name)):
                del n.assigned[name]

    async def _poll_node(self, n: _Node) -> None:
        if n.actor is None or not n.alive:
            return
        started = time.monotonic()
        try:
            st = await asyncio.wait_for(asyncio.wrap_future(n.actor.status.remote().future()),
                                        max(10.0, 5 * self._status_interval))
        except self._node_failures as exc:
            self._node_failed(n, f"{type(exc).__name__}")
            return
        except asyncio.TimeoutError:  # a busy or stuck node: keep what we knew
            logger.warning("node manager on node %s did not answer a status poll", n.node_id)
            return
        n.polled_at = started
        self._apply_status(n, st)

    async def _poll_once(self) -> None:
        await self._refresh_nodes()
        await asyncio.gather(*[self._poll_node(n) for n in list(self._nodes.values())])

    async def _poll_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._status_interval)
            try:
                await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a poll failing must not stop the next one
                logger.exception("cluster status poll failed")
            self._schedule_dispatch()

    def _node_failed(self, n: _Node, why: str) -> None:
        if not n.alive and n.actor is None:
            return
        logger.warning("node manager on node %s lost (%s)", n.node_id, why)
        self._counts["nodes_lost"] += 1
        n.alive = False
        n.lost_at = time.monotonic()
        n.actor = None
        n.models = {}
        n.assigned.clear()

    # ---- dispatching ------------------------------------------------------------

    def _schedule_dispatch(self) -> None:
        if not self._dispatch_scheduled and self._loop is not None and not self._loop.is_closed():
            self._dispatch_scheduled = True
            self._loop.call_soon(self._dispatch)

    def _route(self, t: _Task):
        """``(node, replicas)``: the replica of ``t``'s model that should take it now, and
        how many replicas the model has; node None when there is no live node at all,
        False when every replica is at its in-flight bound (wait)."""
        nodes = [n for n in self._nodes.values()
                 if n.alive and n.node_id != t.lost_on and n.node_id != t.avoid]
        if not nodes:
            return None, 0
        model = t.model
        warm = choose_replica(nodes, model)
        if len(warm) < t.replicas:
            mb = self._model_mb.get(model) or model_mb_hint(model)
            ranked = choose_placement([n for n in nodes if n not in warm], model, t.device, mb)
            now = time.monotonic()
            for cand in ranked[:t.replicas - len(warm)]:
                cand.assigned[model] = now
            warm = choose_replica(nodes, model)
        for n in warm:
            if n.outstanding < self._max_in_flight:
                return n, len(warm)
        return False, len(warm)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        for model, q in list(self._pending.items()):
            while q:
                head = q[0]
                if head.cancelled or head.fut.done():
                    q.popleft()
                    continue
                node, replicas = self._route(head)
                if node is None:
                    self._fail_no_node(q)
                    break
                if node is False:
                    break
                room = min(self._max_in_flight - node.outstanding, self._max_batch)
                if replicas > 1:  # share a burst among the replicas
                    room = min(room, -(-len(q) // replicas))
                batch = []
                while q and len(batch) < room:
                    t = q[0]
                    if (t.lost_on != head.lost_on or t.avoid != head.avoid
                            or t.replicas != head.replicas):
                        break
                    q.popleft()
                    if not (t.cancelled or t.fut.done()):
                        batch.append(t)
                if batch:
                    self._send(node, model, batch)
            if not q:
                self._pending.pop(model, None)

    def _fail_no_node(self, q: Deque[_Task]) -> None:
        while q:
            t = q.popleft()
            if t.fallback is not None:
                self._finish(t, t.fallback)
            elif t.lost_on is not None:
                self._finish(t, Result(False, {}, ErrorInfo(
                    NODE_LOST, f"task {t.id}: node {t.lost_on} was lost and no other node is "
                    "alive to run it", {"task_id": t.id, "lost_on": [t.lost_on]})))
            else:
                self._finish(t, Result(False, {}, ErrorInfo(
                    NO_CAPACITY, "no live Ray node can take the task" +
                    (f" (none declares the resource {self._node_resource!r})"
                     if self._node_resource else ""), {"task_id": t.id})))

    def _send(self, n: _Node, model: str, batch: List[_Task]) -> None:
        try:
            actor = self._actor(n)
        except Exception as exc:  # the actor could not be created
            self._node_failed(n, f"{type(exc).__name__}: {exc}")
            for t in batch:
                t.node = n.node_id
                self._lost(t)
            self._schedule_dispatch()
            return
        try:
            ref = actor.run.remote([t.item for t in batch])
        except self._node_failures as exc:
            self._node_failed(n, type(exc).__name__)
            for t in batch:
                t.node = n.node_id
                self._lost(t)
            self._schedule_dispatch()
            return
        except Exception as exc:  # an argument Ray cannot serialise: find which
            if len(batch) > 1:
                for t in batch:
                    self._send(n, model, [t])
                return
            t = batch[0]
            self._finish(t, Result(False, {}, ErrorInfo(
                "INVALID_ARGUMENT", f"the task's arguments cannot be sent to a node "
                f"({type(exc).__name__}: {str(exc)[:300]})", {"task_id": t.id})))
            return
        k = len(batch)
        n.outstanding += k
        n.own[model] = n.own.get(model, 0) + k
        self._counts["calls"] += 1
        for t in batch:
            t.node = n.node_id
            self._inflight[t.id] = t
        fut = asyncio.wrap_future(ref.future())
        fut.add_done_callback(lambda f, n=n, m=model, b=batch: self._batch_done(n, m, b, f))

    def _batch_done(self, n: _Node, model: str, batch: List[_Task], f) -> None:
        k = len(batch)
        n.outstanding -= k
        n.own[model] = n.own.get(model, 0) - k
        for t in batch:
            self._inflight.pop(t.id, None)
        try:
            outcomes = f.result()
        except self._node_failures as exc:
            self._node_failed(n, type(exc).__name__)
            for t in batch:
                self._lost(t)
        except asyncio.CancelledError:
            for t in batch:
                self._finish(t, Result(False, {}, ErrorInfo(
                    "SHUTTING_DOWN", "the cluster client was closed", None)))
        except Exception as exc:
            for t in batch:
                self._finish(t, Result(False, {}, ErrorInfo(
                    "TASK_FAILED", f"node manager call failed: {type(exc).__name__}: {exc}",
                    {"task_id": t.id, "node": n.node_id})))
        else:
            nid = n.node_id
            for t, (tid, out) in zip(batch, outcomes):
                kind = out[0]
                if kind == "ok":
                    data = out[1]
                    data["node"] = nid
                    self._finish(t, Result(True, data, None))
                elif kind == "err":
                    res = Result(False, {}, ErrorInfo(out[1], out[2], out[3]))
                    if out[1] == "INSUFFICIENT_MEMORY" and t.avoid is None:
                        self._elsewhere(t, n, res)
                    else:
                        self._finish(t, res)
                elif kind == "dropped":
                    self._finish(t, exc=RuntimeError(out[1]))
                elif t.cancelled:
                    self._finish(t, None)
                else:  # cancelled on the node by close(cancel_pending=True)
                    self._finish(t, Result(False, {}, ErrorInfo(
                        "SHUTTING_DOWN", "the cluster model manager was closed", None)))
        self._schedule_dispatch()

    def _elsewhere(self, t: _Task, n: _Node, res: Result) -> None:
        """The node had no memory for the model (its status was older than our routing):
        try the task once on another node, answering ``res`` if there is none."""
        n.assigned.pop(t.model, None)
        t.avoid = n.node_id
        t.fallback = res
        self._counts["rerouted"] += 1
        self._pending.setdefault(t.model, deque()).appendleft(t)

    def _lost(self, t: _Task) -> None:
        if t.fut.done() or t.cancelled:
            return
        if t.lost_on is None:
            t.lost_on = t.node
            self._counts["resubmitted"] += 1
            self._pending.setdefault(t.model, deque()).appendleft(t)
        else:
            self._counts["node_lost"] += 1
            self._finish(t, Result(False, {}, ErrorInfo(
                NODE_LOST, f"task {t.id}: nodes {t.lost_on} and {t.node} were both lost "
                "while running it", {"task_id": t.id, "lost_on": [t.lost_on, t.node]})))

    def _finish(self, t: _Task, result: Optional[Result] = None, exc: Optional[BaseException] = None):
        fut = t.fut
        if fut.done():
            if not fut.cancelled():
                self._counts["double_completions"] += 1
            return
        self._counts["completed"] += 1
        if exc is not None:
            fut.set_exception(exc)
        elif result is None:
            fut.cancel()
        else:
            fut.set_result(result)

    async def _started(self) -> None:
        """Starts the poller on this loop and waits for the first view of the nodes."""
        self._ensure_started()
        if self._nodes_at == 0.0:
            if self._first_poll is None or self._first_poll.get_loop() is not self._loop:
                self._first_poll = self._loop.create_task(self._poll_once())
            await asyncio.shield(self._first_poll)

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._dispatch_scheduled = False
            self._poller = loop.create_task(self._poll_forever())

    # ---- the public API ---------------------------------------------------------

    async def task(self, task_data: Any, task_type: str, model_name: str,
                   num_workers: Optional[int] = 1, device: str = "gpu",
                   keep_alive: Optional[float] = None, replicas: int = 1,
                   **kwargs: Any) -> Result:
        """Runs one task on a node of the cluster; the arguments mean what they mean for
        :meth:`pymodelmgr.ModelManager.task`, per node (``num_workers`` workers on each
        node that serves the model).

        Args:
            replicas: keep the model on at least this many nodes (for throughput); tasks go
                to the replica with the shortest queue.  Idle replicas are released by their
                node's keep-alive like any model.

        Returns:
            The node's :class:`~pymodelmgr.Result` with ``data["node"]`` added, or an error:
            ``NODE_LOST`` (its node was lost and so was the one it was re-sent to),
            ``NO_CAPACITY`` (no live node), or any ModelManager error code.

        Raises:
            RuntimeError: the task was dropped by :meth:`drop_model_queue`.
        """
        if self._closed:
            return Result.error("SHUTTING_DOWN", "the cluster model manager is closed")
        if not self.settings.enabled:
            return Result.error("MODEL_MANAGER_DISABLED",
                                "the model manager is disabled (settings.enabled is False)")
        if not isinstance(model_name, str) or not model_name:
            return Result.error("INVALID_ARGUMENT",
                                f"model_name must be a non-empty string, got {model_name!r}")
        if replicas.__class__ is not int or replicas < 1:
            return Result.error("INVALID_ARGUMENT",
                                f"replicas must be a positive int, got {replicas!r}")
        await self._started()
        model = self._aliases.get(model_name, model_name)
        if num_workers is None:
            num_workers = self.settings.worker_pool.num_workers
        tid = f"{self._client_id}-{next(self._seq)}"
        fut = self._loop.create_future()
        item = (tid, task_data, task_type, model, num_workers, device, keep_alive, kwargs or None)
        t = _Task(tid, item, fut, model, device if isinstance(device, str) else "gpu", replicas)
        self._counts["submitted"] += 1
        q = self._pending.get(model)
        if q is None:
            q = self._pending[model] = deque()
        q.append(t)
        self._schedule_dispatch()
        try:
            return await fut
        except asyncio.CancelledError:
            self._cancel(t)
            raise

    async def stream(self, task_data: Any, task_type: str, model_name: str,
                     num_workers: Optional[int] = 1, device: str = "gpu",
                     keep_alive: Optional[float] = None,
                     on_result: Optional[Callable[[Result], None]] = None,
                     replicas: int = 1, **kwargs: Any) -> AsyncIterator[str]:
        """:meth:`pymodelmgr.ModelManager.stream` on a node of the cluster: yields the
        generated text in pieces as the node produces them (one Ray streaming call per
        stream), routed like :meth:`task`.  Leaving the loop early or cancelling the
        consumer cancels the generation on its node.  ``on_result`` gets the finished
        :class:`~pymodelmgr.Result` (with ``data["node"]``) before the iteration ends.

        A stream whose node is lost before its first piece is sent once to another node;
        lost after that (some text was already yielded), it fails with ``NODE_LOST``.

        Raises:
            StreamError: the generation failed (``code`` and ``message`` as in
                ``Result.error``), including ``NODE_LOST``, ``NO_CAPACITY`` and
                ``SHUTTING_DOWN``.
        """
        if self._closed:
            raise StreamError("SHUTTING_DOWN", "the cluster model manager is closed")
        if not self.settings.enabled:
            raise StreamError("MODEL_MANAGER_DISABLED",
                              "the model manager is disabled (settings.enabled is False)")
        if not isinstance(model_name, str) or not model_name:
            raise StreamError("INVALID_ARGUMENT",
                              f"model_name must be a non-empty string, got {model_name!r}")
        if replicas.__class__ is not int or replicas < 1:
            raise StreamError("INVALID_ARGUMENT",
                              f"replicas must be a positive int, got {replicas!r}")
        await self._started()
        model = self._aliases.get(model_name, model_name)
        if num_workers is None:
            num_workers = self.settings.worker_pool.num_workers
        tid = f"{self._client_id}-{next(self._seq)}"
        item = (tid, task_data, task_type, model, num_workers, device, keep_alive, kwargs or None)
        t = _Task(tid, item, None, model, device if isinstance(device, str) else "gpu", replicas)
        self._counts["submitted"] += 1
        yielded = False
        while True:
            node, _ = self._route(t)
            while node is False:  # every replica at its in-flight bound
                await asyncio.sleep(0.005)
                node, _ = self._route(t)
            if node is None:
                self._counts["completed"] += 1
                if t.lost_on is not None:
                    raise StreamError(NODE_LOST, f"stream {tid}: node {t.lost_on} was lost and "
                                      "no other node is alive to run it")
                raise StreamError(NO_CAPACITY, "no live Ray node can take the stream")
            try:
                actor = self._actor(node)
                gen = actor.stream.options(num_returns="streaming").remote(item)
            except self._node_failures as exc:
                self._node_failed(node, type(exc).__name__)
                t.lost_on = t.lost_on or node.node_id
                continue
            t.node = node.node_id
            node.outstanding += 1
            node.own[model] = node.own.get(model, 0) + 1
            ended = False  # the node answered the end (or was lost): nothing to cancel
            try:
                async for ref in gen:
                    out = await ref
                    kind = out[0]
                    if kind == "piece":
                        yielded = True
                        yield out[1]
                        continue
                    ended = True
                    self._counts["completed"] += 1
                    if kind == "ok":
                        data = out[1]
                        data["node"] = node.node_id
                        if on_result is not None:
                            on_result(Result(True, data, None))
                        return
                    if kind == "err":
                        if on_result is not None:
                            on_result(Result(False, {}, ErrorInfo(out[1], out[2], out[3])))
                        raise StreamError(out[1], out[2])
                    raise StreamError("SHUTTING_DOWN", "the stream was cancelled on its node "
                                      "(its node manager is closing)")
                ended = True
                self._counts["completed"] += 1
                raise StreamError("TASK_FAILED", f"stream {tid}: node {node.node_id} ended the "
                                  "stream without a result")
            except self._node_failures as exc:
                ended = True
                self._node_failed(node, type(exc).__name__)
                if yielded or t.lost_on is not None:
                    self._counts["completed"] += 1
                    self._counts["node_lost"] += 1
                    raise StreamError(NODE_LOST, f"stream {tid}: node {node.node_id} was lost "
                                      "while generating") from exc
                t.lost_on = node.node_id
                self._counts["resubmitted"] += 1
            finally:
                node.outstanding -= 1
                node.own[model] = node.own.get(model, 0) - 1
                if not ended:  # the consumer left early or was cancelled
                    self._counts["completed"] += 1
                    try:
                        actor.cancel.remote([tid])
                    except Exception:  # the node is gone: nothing runs there any more
                        pass

    def _cancel(self, t: _Task) -> None:
        t.cancelled = True
        if t.id in self._inflight:
            n = self._nodes.get(t.node)
            if n is not None and n.actor is not None:
                n.actor.cancel.remote([t.id])

    async def _each_node(self, method: str, *args) -> Dict[str, Any]:
        """Calls ``method`` on every live node manager; node id -> its answer."""
        self._ensure_started()
        await self._poll_once()
        nodes = [n for n in self._nodes.values() if n.alive]
        refs = []
        for n in nodes:
            try:
                refs.append(getattr(self._actor(n), method).remote(*args))
            except Exception as exc:
                refs.append(None)
                self._node_failed(n, type(exc).__name__)
        out = {}
        for n, ref in zip(nodes, refs):
            if ref is None:
                continue
            try:
                out[n.node_id] = await ref
            except self._node_failures as exc:
                self._node_failed(n, type(exc).__name__)
        return out

    async def release_model(self, model_name: str) -> Result:
        """Releases the model on every node that has it (queued tasks there finish first).

        Returns:
            ``data = {"model_name", "released", "nodes"}``: ``released`` is True when some
            node had it loaded; ``nodes`` maps node id -> that node's ``released``.
        """
        if not isinstance(model_name, str) or not model_name:
            return Result.error("INVALID_ARGUMENT", "model_name must be a non-empty string")
        if self._closed:
            return Result.error("SHUTTING_DOWN", "the cluster model manager is closed")
        model = self._aliases.get(model_name, model_name)
        answers = await self._each_node("release_model", model)
        per_node = {}
        for nid, a in answers.items():
            if not a["success"]:
                return Result.error(a["error"][0], f"node {nid}: {a['error'][1]}")
            per_node[nid] = bool(a["data"].get("released"))
        for n in self._nodes.values():
            n.assigned.pop(model, None)
            n.models.pop(model, None)
        return Result.success(data={"model_name": model, "released": any(per_node.values()),
                                    "nodes": per_node})

    async def drop_model_queue(self, model_name: str, reason: str = "Manual drop") -> Result:
        """Drops every queued task of a model, here and on every node; their callers get
        ``RuntimeError`` carrying ``reason``.  Running tasks finish; models stay loaded.

        Returns:
            ``data = {"dropped", "futures_cancelled", "model_name", "reason", "nodes"}``
            (``nodes``: node id -> tasks dropped there, any client's).
        """
        if not isinstance(model_name, str) or not model_name:
            return Result.error("INVALID_ARGUMENT", "model_name must be a non-empty string")
        if not isinstance(reason, str):
            return Result.error("INVALID_ARGUMENT", "reason must be a string")
        model = self._aliases.get(model_name, model_name)
        local = 0
        cancelled = 0
        q = self._pending.pop(model, None) or ()
        for t in q:
            if t.fut.done() or t.cancelled:
                continue
            local += 1
            self._finish(t, exc=RuntimeError(f"Task dropped: {reason}"))
            cancelled += 1
        answers = await self._each_node("drop_model_queue", model, reason)
        per_node = {}
        for nid, a in answers.items():
            per_node[nid] = a["data"].get("dropped", 0) if a["success"] else 0
            cancelled += a["data"].get("futures_cancelled", 0) if a["success"] else 0
        logger.info("drop_model_queue(%s): dropped %d here, %d on nodes: %s", model, local,
                    sum(per_node.values()), reason)
        return Result.success(data={"dropped": local + sum(per_node.values()),
                                    "futures_cancelled": cancelled, "model_name": model,
                                    "reason": reason, "nodes": per_node})

    async def status(self) -> Result:
        """Aggregated status: ``data["nodes"]`` is one dict per live node (``node_id``,
        ``devices`` as ModelManager.status reports them (memory per device), ``gpus_mb``, ``models`` as ModelManager.status reports them, ``queue_depth``,
        ``in_flight``, ``client_in_flight``, ``resources``); ``data["models"]`` lists every
        node's models with ``"node"`` added (ModelManager.status's shape);
        ``data["tasks"]`` has this client's accounting (``submitted``, ``completed``,
        ``pending``, ``in_flight``, ``resubmitted``, ``node_lost``, ``double_completions``,
        ``calls``, ``nodes_lost``, ``rerouted``: tasks sent to another node after theirs
        answered ``INSUFFICIENT_MEMORY``)."""
        if self._closed:
            return Result.error("SHUTTING_DOWN", "the cluster model manager is closed")
        self._ensure_started()
        for n in self._nodes.values():  # status shows every node, with a node manager or not
            if n.alive:
                self._actor(n)
        await self._poll_once()
        nodes, models = [], []
        for n in self._nodes.values():
            if not n.alive:
                continue
            ms = list(n.models.values())
            for m in ms:
                models.append(dict(m, node=n.node_id))
            nodes.append({"node_id": n.node_id, "devices": n.stats.get("devices"),
                          "gpus_mb": n.gpus_mb,
                          "gpu_free_mb": n.gpu_free_mb(), "models": ms,
                          "queue_depth": sum(m.get("queue_depth", 0) for m in ms),
                          "in_flight": sum(m.get("in_flight", 0) for m in ms),
                          "client_in_flight": n.outstanding,
                          "resources": n.resources, "pid": n.stats.get("pid")})
        tasks = dict(self._counts)
        tasks["pending"] = sum(len(q) for q in self._pending.values())
        tasks["in_flight"] = len(self._inflight)
        return Result.success(data={"nodes": nodes, "models": models, "tasks": tasks})

    async def close(self, cancel_pending: bool = False, shutdown_nodes: bool = False) -> None:
        """Stops this client: with ``cancel_pending`` its queued tasks fail with
        ``SHUTTING_DOWN`` (and running ones are cancelled), otherwise they finish first.
        The node managers keep running for other clients (their models go with
        keep-alive) unless ``shutdown_nodes``, which closes and kills them.  Disconnects
        from Ray when this client connected.  Safe to call twice."""
        if self._closed:
            return
        if cancel_pending:
            for q in self._pending.values():
                for t in q:
                    self._finish(t, Result(False, {}, ErrorInfo(
                        "SHUTTING_DOWN", "the cluster model manager was closed", None)))
            self._pending.clear()
            by_node: Dict[str, List[str]] = {}
            for t in self._inflight.values():
                by_node.setdefault(t.node, []).append(t.id)
            for nid, ids in by_node.items():
                n = self._nodes.get(nid)
                if n is not None and n.actor is not None:
                    n.actor.cancel.remote(ids)
        waiting = [t.fut for q in self._pending.values() for t in q]
        waiting += [t.fut for t in self._inflight.values()]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except (asyncio.CancelledError, Exception):
                pass
        if shutdown_nodes:
            await self._shutdown_nodes(cancel_pending)
        if self._owns_ray:
            self._ray.shutdown()

    async def _shutdown_nodes(self, cancel_pending: bool) -> None:
        ray = self._ray
        await self._refresh_nodes()
        for n in self._nodes.values():
            if not n.alive:
                continue
            try:
                actor = ray.get_actor(f"pymodelmgr-node-{n.node_id}", namespace=self._namespace)
            except ValueError:
                continue
            try:
                await actor.close.remote(cancel_pending)
            except self._node_failures:
                pass
            ray.kill(actor)
            n.actor = None

    async def __aenter__(self) -> "ClusterModelManager":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.close(cancel_pending=exc_type is not None)

    def __repr__(self) -> str:
        return (f"<ClusterModelManager closed={self._closed} "
                f"nodes={sum(n.alive for n in self._nodes.values())}>")
