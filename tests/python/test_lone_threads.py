"""A lone request's decoder steps start no OpenMP team.

On the CPU a lone request's decoder products are shared by the shim's own
work-sharing pool (mmt_pool.c).  The step's other operators are small, but
some of ATen's start an OpenMP team whatever their size (oneDNN's GELU, adds
over the vocabulary), and after each team libgomp's idle thread spins for
milliseconds on the core the pool's helper needs: a bart-base-shaped lone
greedy request took 570 ms instead of 365.  The steps therefore run ATen's
operators on the calling thread alone (mmt::PoolOnly, mmt_threads.h) while the
products keep both threads.

The test counts libgomp's GOMP_parallel calls (an LD_PRELOAD wrapper compiled
here) while a two-thread handle generates 2 and then 12 new tokens for one
prompt of a tiny BART: the encoder's teams are the same in both, so the counts
must be equal.  The same for beam search.  Outputs are the parity tests' job
(test_generate_parity.py); here the tokens of the run are compared with a run
on one thread.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from test_generate_helpers import make_bart

HERE = os.path.dirname(os.path.abspath(__file__))

SPY = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
static long calls;
long gomp_spy_calls(void) { return __atomic_load_n(&calls, __ATOMIC_SEQ_CST); }
void GOMP_parallel(void (*fn)(void *), void *data, unsigned n, unsigned flags) {
    static void (*real)(void (*)(void *), void *, unsigned, unsigned);
    if (!real)
        real = (void (*)(void (*)(void *), void *, unsigned, unsigned))dlsym(RTLD_NEXT,
                                                                            "GOMP_parallel");
    __atomic_add_fetch(&calls, 1, __ATOMIC_SEQ_CST);
    real(fn, data, n, flags);
}
"""

CHILD = textwrap.dedent("""
    import ctypes, json, sys
    import torch
    sys.path.insert(0, {here!r})
    from test_generate_helpers import Generator
    spy = ctypes.CDLL(None).gomp_spy_calls
    spy.restype = ctypes.c_long
    g = Generator({path!r})
    ids = [0, 17, 93, 45, 200, 8, 61, 2]
    out = {{}}
    for beams in (1, 2):
        for threads in (2, 1):
            torch.set_num_threads(threads)
            kw = dict(num_beams=beams, early_stopping=beams > 1, length_penalty=1.0)
            g.generate([ids], max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
            counts, toks = [], []
            for new in (2, 12):
                c = spy()
                toks.append(g.generate([ids], max_new_tokens=new, min_new_tokens=new, **kw)[0][0])
                counts.append(spy() - c)
            out[f"{{beams}}/{{threads}}"] = dict(counts=counts, tokens=toks)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def spy_lib(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler builds the shim; none found"
    d = tmp_path_factory.mktemp("gompspy")
    src = d / "spy.c"
    src.write_text(SPY)
    so = d / "spy.so"
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"], check=True)
    return str(so)


def test_decoder_steps_start_no_openmp_team(spy_lib, tmp_path):
    path = str(tmp_path / "bart")
    make_bart(path)
    env = dict(os.environ, LD_PRELOAD=spy_lib)
    r = subprocess.run([sys.executable, "-c", CHILD.format(here=HERE, path=path)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for beams in (1, 2):
        two, one = out[f"{beams}/2"], out[f"{beams}/1"]
        # the encoder (GELU in each layer) starts teams on two threads: the spy sees them
        assert two["counts"][0] > 0, out
        # ten more decoder steps start none
        assert two["counts"][1] == two["counts"][0], (beams, out)
        assert one["counts"] == [0, 0], out
        # the same tokens on one thread and on two
        assert two["tokens"] == one["tokens"], (beams, out)
        assert len(two["tokens"][1]) >= 12
