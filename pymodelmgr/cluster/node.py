"""The node manager: one long-lived Ray actor per node, owning a ModelManager.

:class:`NodeManager` is a plain class; the client wraps it with ``ray.remote`` and
pins one instance to each node (a named, detached actor, so a restarted client finds
the same node managers and their warm models).  Batching, keep-alive, the memory
policy and release all happen inside its ModelManager, exactly as on one machine;
the actor only carries tasks in and outcomes out.

Tasks arrive in batches (one actor call carries many tasks) as tuples
``(task_id, task_data, task_type, model_name, num_workers, device, keep_alive, kwargs)``;
each comes back as ``(task_id, outcome)`` where outcome is ``("ok", data)``,
``("err", code, message, details)``, ``("dropped", message)`` or ``("cancelled",)``.
Streams (:meth:`NodeManager.stream`) are one actor call each, a Ray streaming generator.
Task ids are the client's: the actor remembers the outcome of the last
``remember`` ids, so an id delivered twice runs once and answers the same outcome.
"""
from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

from ..manager import ModelManager, StreamError
from ..settings import ModelManagerSettings

__all__ = ["NodeManager", "parse_fake_gpus"]


def parse_fake_gpus(spec: Optional[str]) -> Optional[List[int]]:
    """Free MiB per GPU from a ``fake_gpus`` string ("24000,16000" -> [24000, 16000],
    "none" -> []); None when the string is absent or not understood (real GPUs,
    whose memory the node does not report here)."""
    if spec is None:
        return None
    spec = spec.strip()
    if spec == "none" or spec == "":
        return []
    try:
        return [int(float(x)) for x in spec.split(",")]
    except ValueError:
        return None


class NodeManager:
    """The per-node actor.  ``settings`` is a dict of :class:`ModelManagerSettings` fields;
    ``node_id`` is the Ray node it is pinned to (reported back in :meth:`status`)."""

    def __init__(self, settings: Dict[str, Any], node_id: str, remember: int = 200_000):
        self._settings = ModelManagerSettings(**settings)
        self._node_id = node_id
        self._mm = ModelManager(self._settings)
        self._running: Dict[str, asyncio.Task] = {}
        self._outcomes: "OrderedDict[str, tuple]" = OrderedDict()
        self._remember = remember
        self._calls = 0
        self._tasks_run = 0
        self._replayed = 0
        fake = self._settings.fake_gpus
        if fake is None:
            fake = os.environ.get("PYMODELMGR_FAKE_GPUS")
        self._gpus_mb = parse_fake_gpus(fake)

    async def _one(self, item: tuple) -> tuple:
        tid = item[0]
        done = self._outcomes.get(tid)
        if done is not None:
            self._replayed += 1
            return tid, done
        running = self._running.get(tid)
        if running is not None:  # the same id twice in flight: answer both from one run
            self._replayed += 1
            return tid, await asyncio.shield(running)
        t = asyncio.ensure_future(self._run(item))
        self._running[tid] = t
        try:
            out = await asyncio.shield(t)
        except asyncio.CancelledError:
            t.cancel()
            out = ("cancelled",)
        return tid, out

    async def _run(self, item: tuple) -> tuple:
        tid, data, task_type, model_name, num_workers, device, keep_alive, kwargs = item
        self._tasks_run += 1
        try:
            r = await self._mm.task(data, task_type, model_name, num_workers=num_workers,
                                    device=device, keep_alive=keep_alive, **(kwargs or {}))
            if r.success:
                out = ("ok", r.data)
            else:
                e = r.error
                out = ("err", e.code, e.message, e.details)
        except RuntimeError as exc:  # drop_model_queue
            out = ("dropped", str(exc))
        except asyncio.CancelledError:
            out = ("cancelled",)
        except Exception as exc:  # a bug, reported as a value rather than killing the batch
            out = ("err", "TASK_FAILED", f"{type(exc).__name__}: {exc}", None)
        self._running.pop(tid, None)
        self._outcomes[tid] = out
        if len(self._outcomes) > self._remember:
            self._outcomes.popitem(last=False)
        return out

    async def run(self, batch: List[tuple]) -> List[Tuple[str, tuple]]:
        """Runs a batch of tasks concurrently (they reach the workers as one burst) and
        returns every task's ``(task_id, outcome)`` in batch order."""
        self._calls += 1
        return list(await asyncio.gather(*[self._one(item) for item in batch]))

    async def stream(self, item: tuple):
        """ModelManager.stream on this node, as a Ray streaming generator: yields
        ``("piece", text)`` for each piece, then one final ``("ok", data)`` or
        ``("err", code, message, details)``.  The id joins the running tasks, so
        :meth:`cancel` stops the generation (its sequence leaves the batch)."""
        tid, data, task_type, model_name, num_workers, device, keep_alive, kwargs = item
        self._tasks_run += 1
        self._running[tid] = asyncio.current_task()
        final: list = []
        try:
            async for piece in self._mm.stream(data, task_type, model_name,
                                               num_workers=num_workers, device=device,
                                               keep_alive=keep_alive, on_result=final.append,
                                               **(kwargs or {})):
                yield ("piece", piece)
            res = final[0]
            yield ("ok", res.data)
        except StreamError as exc:
            yield ("err", exc.code, exc.message, None)
        except asyncio.CancelledError:
            yield ("cancelled",)
        finally:
            self._running.pop(tid, None)

    async def cancel(self, task_ids: List[str]) -> int:
        """Cancels running tasks by id (their outcome becomes ``("cancelled",)``);
        returns how many were found."""
        n = 0
        for tid in task_ids:
            t = self._running.get(tid)
            if t is not None and not t.done():
                t.cancel()
                n += 1
        return n

    async def release_model(self, model_name: str) -> Dict[str, Any]:
        """ModelManager.release_model on this node; returns the result as a dict."""
        r = await self._mm.release_model(model_name)
        return {"success": r.success, "data": r.data,
                "error": None if r.success else (r.error.code, r.error.message)}

    async def drop_model_queue(self, model_name: str, reason: str) -> Dict[str, Any]:
        """ModelManager.drop_model_queue on this node; the dropped tasks' outcomes come
        back through their batches as ``("dropped", message)``."""
        r = await self._mm.drop_model_queue(model_name, reason)
        return {"success": r.success, "data": r.data,
                "error": None if r.success else (r.error.code, r.error.message)}

    async def status(self) -> Dict[str, Any]:
        """This node: its id, pid, GPU memory (MiB per GPU when known), the
        ModelManager's status, and the actor's own counters."""
        r = await self._mm.status()
        data = r.data if r.success else {}
        gpus_mb = self._gpus_mb
        devices = data.get("devices")
        if devices:  # the memory policy's numbers: each GPU's budget
            gpus_mb = [d["budget_bytes"] / 2**20 for d in devices
                       if str(d.get("name", "")).startswith("cuda") and d.get("budget_bytes")]
        return {"node_id": self._node_id, "pid": os.getpid(), "gpus_mb": gpus_mb,
                "devices": devices,
                "models": data.get("models", []), "tasks": data.get("tasks", {}),
                "embedding_cache": data.get("embedding_cache"),
                "running": len(self._running), "calls": self._calls,
                "tasks_run": self._tasks_run, "replayed": self._replayed}

    async def close(self, cancel_pending: bool = False) -> None:
        """Closes the ModelManager (the actor itself is killed by the client)."""
        await self._mm.close(cancel_pending=cancel_pending)
