"""Prometheus metrics of pymodelmgr, for apps that run their own exporter.

The numbers are kept in the C core (``csrc/core/mm_metrics.c``): the worker threads
count them where the work happens, under the engine lock they already hold.  This
module only reads a snapshot per scrape and shapes it into Prometheus families::

    from prometheus_client import REGISTRY, start_http_server
    import pymodelmgr.metrics

    pymodelmgr.metrics.register(REGISTRY)   # every ModelManager of this process
    start_http_server(9100)

``python -m pymodelmgr serve`` exports the same families on ``GET /metrics``.

Families (labels in braces; ``model`` is the model name as requested):

========================================  ==========  ==========================================
``pymodelmgr_tasks_total``                counter     {model, task_type, outcome}: success, failed,
                                                      timed_out, cancelled, dropped, rejected,
                                                      shutdown
``pymodelmgr_items_total``                counter     {model}: texts run by the model
``pymodelmgr_batches_total``              counter     {model}: backend calls (batches)
``pymodelmgr_input_tokens_total``         counter     {model}: tokens read (after truncation)
``pymodelmgr_output_tokens_total``        counter     {model}: tokens generated
``pymodelmgr_model_loads_total``          counter     {model, result}: success, failed (per worker)
``pymodelmgr_model_releases_total``       counter     {model, reason}: manual, idle, shutdown,
                                                      load_failed, evicted, oom
``pymodelmgr_queue_wait_seconds``         histogram   {model}: submit to a worker taking the task
``pymodelmgr_run_seconds``                histogram   {model}: one batch in the backend
``pymodelmgr_batch_items``                histogram   {model}: texts per batch
``pymodelmgr_load_seconds``               histogram   {model}: one worker's load
``pymodelmgr_queue_depth``                gauge       {model}: tasks waiting
``pymodelmgr_in_flight``                  gauge       {model}: tasks running
``pymodelmgr_workers``                    gauge       {model}: workers (``state`` loaded or total)
``pymodelmgr_memory_bytes``               gauge       {model, device}: what the backend holds
``pymodelmgr_device_memory_bytes``        gauge       {device}: the sum over models
``pymodelmgr_device_total_bytes``         gauge       {device}: also ``_free_bytes``,
                                                      ``_budget_bytes``, ``_used_bytes`` (the memory
                                                      policy's view)
``pymodelmgr_embedding_cache_hits_total`` counter     (also ``_misses_total``, ``_evictions_total``,
                                                      ``_expirations_total``; ``_entries`` gauge)
========================================  ==========  ==========================================

Counters never go back: a model released and loaded again keeps counting.  With several
managers in one process their numbers are added up per label set.
"""
from __future__ import annotations

import weakref
from typing import Any, Dict, Iterable, List, Optional, Tuple

__all__ = ["register", "unregister", "PymodelmgrCollector", "snapshot"]

# Every ModelManager registers itself here (manager.py) so a collector can find them.
_MANAGERS: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _track(manager: Any) -> None:
    """Called by ModelManager.__init__."""
    _MANAGERS.add(manager)


def snapshot(manager: Any) -> Optional[Dict[str, Any]]:
    """The core's raw metrics of one manager (the dict of ``_core.Engine.metrics()``),
    with ``embedding_cache`` added; None when the manager is closed."""
    if getattr(manager, "_closed", True):
        return None
    try:
        snap = manager._engine.metrics()
        snap["embedding_cache"] = manager._engine.stats().get("embedding_cache")
        devices = getattr(manager._engine, "devices", None)  # the memory policy's view
        snap["devices"] = devices() if devices else []
    except RuntimeError:  # closed between the check and the call
        return None
    return snap


def _cumulative(bounds: List[float], counts: List[int]) -> List[Tuple[str, float]]:
    out, acc = [], 0
    for b, c in zip(bounds, counts):
        acc += c
        out.append((_le(b), acc))
    out.append(("+Inf", acc + counts[len(bounds)]))
    return out


def _le(b: float) -> str:
    return repr(float(b))


class PymodelmgrCollector:
    """A ``prometheus_client`` collector over one manager, or over every open manager
    of the process (``manager=None``).  Register it with :func:`register`."""

    def __init__(self, manager: Any = None):
        self._manager = weakref.ref(manager) if manager is not None else None

    def _managers(self) -> Iterable[Any]:
        if self._manager is None:
            return list(_MANAGERS)
        m = self._manager()
        return [m] if m is not None else []

    def describe(self):
        # No describe: the families depend on what ran (prometheus_client then calls
        # collect() once at registration to check for clashes, which is cheap).
        return self.collect()

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)

        snaps = [s for s in (snapshot(m) for m in self._managers()) if s is not None]

        def counter(name, doc, labels):
            return CounterMetricFamily(name, doc, labels=labels)

        tasks = counter("pymodelmgr_tasks", "Tasks finished, by outcome.",
                        ["model", "task_type", "outcome"])
        items = counter("pymodelmgr_items", "Texts processed by the model.", ["model"])
        batches = counter("pymodelmgr_batches", "Batches run by the backend.", ["model"])
        tok_in = counter("pymodelmgr_input_tokens", "Tokens read by the model.", ["model"])
        tok_out = counter("pymodelmgr_output_tokens", "Tokens generated.", ["model"])
        loads = counter("pymodelmgr_model_loads", "Worker loads, by result.", ["model", "result"])
        rels = counter("pymodelmgr_model_releases", "Model instances released, by reason.",
                       ["model", "reason"])
        hist_docs = {
            "queue_wait_seconds": ("pymodelmgr_queue_wait_seconds",
                                   "Seconds from submit to a worker taking the task."),
            "run_seconds": ("pymodelmgr_run_seconds", "Seconds one batch ran in the backend."),
            "batch_items": ("pymodelmgr_batch_items", "Texts per batch."),
            "load_seconds": ("pymodelmgr_load_seconds", "Seconds one worker took to load."),
        }
        hists = {k: HistogramMetricFamily(n, d, labels=["model"]) for k, (n, d) in hist_docs.items()}
        qdepth = GaugeMetricFamily("pymodelmgr_queue_depth", "Tasks waiting in the queue.",
                                   labels=["model"])
        inflight = GaugeMetricFamily("pymodelmgr_in_flight", "Tasks running now.", labels=["model"])
        workers = GaugeMetricFamily("pymodelmgr_workers", "Workers of a model.",
                                    labels=["model", "state"])
        mem = GaugeMetricFamily("pymodelmgr_memory_bytes",
                                "Bytes a model's backend holds on a device.",
                                labels=["model", "device"])
        devmem = GaugeMetricFamily("pymodelmgr_device_memory_bytes",
                                   "Bytes all models hold on a device.", labels=["device"])
        dev = {k: GaugeMetricFamily(f"pymodelmgr_device_{k}_bytes", doc, labels=["device"])
               for k, doc in (("total", "A device's memory."),
                              ("free", "A device's free memory, as last measured."),
                              ("budget", "What models may use on a device (memory_fraction)."),
                              ("used", "What the memory policy counts as used by models."))}

        # Sum across managers per label set.
        acc: Dict[Tuple, float] = {}

        def add(key, v):
            acc[key] = acc.get(key, 0) + v

        hacc: Dict[Tuple[str, str], Tuple[List[float], List[int], float]] = {}
        for s in snaps:
            lat, bat = s["latency_buckets"], s["batch_buckets"]
            for se in s["series"]:
                m, tt = se["model"], se["task_type"]
                for outcome, n in se["tasks"].items():
                    add(("tasks", m, tt, outcome), n)
                add(("items", m), se["items"])
                add(("batches", m), se["batches"])
                add(("tok_in", m), se["tokens_in"])
                add(("tok_out", m), se["tokens_out"])
                for res, n in se["loads"].items():
                    add(("loads", m, res), n)
                for reason, n in se["releases"].items():
                    add(("rels", m, reason), n)
                for k in hist_docs:
                    counts, cnt, total = se[k]
                    bounds = bat if k == "batch_items" else lat
                    prev = hacc.get((k, m))
                    if prev is None:
                        hacc[(k, m)] = (bounds, list(counts), total)
                    else:
                        hacc[(k, m)] = (bounds, [a + b for a, b in zip(prev[1], counts)],
                                        prev[2] + total)
            for g in s["gauges"]:
                m = g["model"]
                add(("qdepth", m), g["queue_depth"])
                add(("inflight", m), g["in_flight"])
                add(("workers", m, "total"), g["workers"])
                add(("workers", m, "loaded"), g["workers_loaded"])
            for r in s["memory"]:
                add(("mem", r["model"], r["device"]), r["bytes"])
                add(("devmem", r["device"]), r["bytes"])
            for d in s.get("devices") or []:
                for k in dev:
                    if d.get(f"{k}_bytes") is not None:
                        acc[("dev_" + k, d["name"])] = d[f"{k}_bytes"]  # one machine: not summed
            cache = s.get("embedding_cache")
            if cache:
                for k in ("hits", "misses", "evictions", "expirations", "size"):
                    add(("cache", k), cache[k])

        fams = {"tasks": tasks, "items": items, "batches": batches, "tok_in": tok_in,
                "tok_out": tok_out, "loads": loads, "rels": rels, "qdepth": qdepth,
                "inflight": inflight, "workers": workers, "mem": mem, "devmem": devmem,
                **{"dev_" + k: f for k, f in dev.items()}}
        for key in sorted(acc, key=lambda k: tuple(str(x) for x in k)):
            if key[0] in fams:
                fams[key[0]].add_metric(list(key[1:]), acc[key])
        yield from fams.values()
        for (k, m), (bounds, counts, total) in sorted(hacc.items()):
            hists[k].add_metric([m], _cumulative(bounds, counts), total)
        yield from hists.values()
        if any(k[0] == "cache" for k in acc):
            for k in ("hits", "misses", "evictions", "expirations"):
                c = counter(f"pymodelmgr_embedding_cache_{k}", f"Embedding cache {k}.", [])
                c.add_metric([], acc.get(("cache", k), 0))
                yield c
            g = GaugeMetricFamily("pymodelmgr_embedding_cache_entries",
                                  "Vectors in the embedding cache.")
            g.add_metric([], acc.get(("cache", "size"), 0))
            yield g


def register(registry: Any = None, manager: Any = None) -> PymodelmgrCollector:
    """Registers pymodelmgr's metrics with a ``prometheus_client`` registry.

    Args:
        registry: a ``prometheus_client.CollectorRegistry``; None takes the default
            ``prometheus_client.REGISTRY``.
        manager: one :class:`~pymodelmgr.ModelManager` to export; None exports every
            manager of the process, summed per label set (managers created later too).

    Returns:
        The collector, for :func:`unregister`.
    """
    if registry is None:
        from prometheus_client import REGISTRY as registry  # noqa: N811
    collector = PymodelmgrCollector(manager)
    registry.register(collector)
    return collector


def unregister(collector: PymodelmgrCollector, registry: Any = None) -> None:
    """Removes a collector that :func:`register` returned."""
    if registry is None:
        from prometheus_client import REGISTRY as registry  # noqa: N811
    registry.unregister(collector)
