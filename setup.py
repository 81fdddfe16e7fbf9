"""Builds pymodelmgr's native parts through CMake.

The C core, the tokenizer, the hub client and the `pymodelmgr._core`
extension are one CMake project (CMakeLists.txt at the top); the libtorch
shim (libmm_torch.so, the real-model backend) joins it, built against the
torch installed in the target environment.  torch is never a build
requirement (pip would fetch its default, CUDA, build): install the torch you
want first, then `pip install .`.  pip's isolated build environment has no
torch, so the build looks for it with the same interpreter outside the
isolation (`python -I`), which is the environment pip installs into; when
torch is in neither, the build stops and says what to run.

Environment knobs: PYMODELMGR_BUILD_TORCH=0 to build without the shim
(synthetic models only; `auto`: the shim when torch is found),
PYMODELMGR_SANITIZE=address|thread for a sanitizer build,
PYMODELMGR_BUILD_TYPE (default RelWithDebInfo), PYMODELMGR_JOBS (default:
all cores), PYMODELMGR_BUILD_DIR (default build/py), PYMODELMGR_VERBOSE=1 (or
`make build V=1`) to see CMake's output, which otherwise goes to
<build dir>/build.log and is shown only when the build fails.
"""
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _install_file(src, dst):
    """Copies src to dst through a temporary name and an atomic rename: a
    process that has the old library mapped keeps its (now unlinked) copy,
    where overwriting in place would change the pages under it."""
    tmp = dst + ".tmp-%d" % os.getpid()
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


_PROBE = "import torch, torch.utils; print(torch.utils.cmake_prefix_path); print(torch.__version__)"

NO_TORCH_MESSAGE = """
pymodelmgr: torch is not installed in this Python environment ({python}),
so the libtorch shim, pymodelmgr's backend for real models, cannot be built.
pymodelmgr never installs torch itself (pip's default torch is a multi-GB CUDA
build).  Install the torch build you want into this environment, then build again:

    {python} -m pip install torch==2.13.0      # or the CPU/CUDA build you need
    {python} -m pip install .

Or build without the real-model backend (synthetic test models only):

    PYMODELMGR_BUILD_TORCH=0 {python} -m pip install .
"""


def _probe_torch(isolated):
    """(cmake prefix, version) of the torch this interpreter imports, or None.
    isolated: run it with -I, outside pip's build isolation (which hides the
    target environment's site-packages behind PYTHONPATH)."""
    cmd = [sys.executable] + (["-I"] if isolated else []) + ["-c", _PROBE]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    return (out[0], out[1]) if len(out) == 2 else None


def _torch_prefix():
    """The CMake prefix of the torch to build the shim against; None to build
    without the shim (PYMODELMGR_BUILD_TORCH=0, or =auto and torch absent).
    Exits with NO_TORCH_MESSAGE when torch is required and absent."""
    mode = os.environ.get("PYMODELMGR_BUILD_TORCH", "1").strip().lower()
    if mode in ("0", "off", "no", "false"):
        return None
    found = _probe_torch(isolated=False)
    if found is None:
        found = _probe_torch(isolated=True)
        if found is not None:
            print("pymodelmgr: building the libtorch shim against torch %s of %s "
                  "(found outside the isolated build environment)" % (found[1], sys.executable),
                  file=sys.stderr)
    if found is None:
        if mode == "auto":
            return None
        sys.stderr.write(NO_TORCH_MESSAGE.format(python=sys.executable))
        raise SystemExit(1)
    return found[0]


def _verbose():
    return os.environ.get("PYMODELMGR_VERBOSE", "0") not in ("", "0")


def _run(cmd, log):
    """Runs a build step; its output goes to the log file (appended) unless
    verbose, and its last lines to stderr when it fails."""
    if _verbose():
        subprocess.run(cmd, check=True)
        return
    with open(log, "a") as f:
        f.write("$ %s\n" % " ".join(cmd))
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        with open(log) as f:
            tail = f.readlines()[-60:]
        sys.stderr.write("".join(tail))
        sys.stderr.write("pymodelmgr: build step failed (exit %d); full log: %s\n" % (rc, log))
        raise SystemExit(rc)


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        root = os.path.dirname(os.path.abspath(__file__))
        build_dir = os.environ.get("PYMODELMGR_BUILD_DIR") or os.path.join(root, "build", "py")
        out_path = self.get_ext_fullpath(ext.name)
        out_dir = os.path.dirname(os.path.abspath(out_path))
        os.makedirs(out_dir, exist_ok=True)
        args = [
            "cmake", "-S", root, "-B", build_dir,
            "-DCMAKE_BUILD_TYPE=" + os.environ.get("PYMODELMGR_BUILD_TYPE", "RelWithDebInfo"),
            "-DMM_BUILD_TESTS=OFF",
            "-DPython3_EXECUTABLE=" + sys.executable,
            "-DMM_SANITIZE=" + os.environ.get("PYMODELMGR_SANITIZE", ""),
        ]
        prefix = _torch_prefix()
        if prefix:
            args += ["-DCMAKE_PREFIX_PATH=" + prefix, "-DMM_BUILD_TORCH=ON"]
        else:
            args += ["-DMM_BUILD_TORCH=OFF"]
        os.makedirs(build_dir, exist_ok=True)
        log = os.path.join(build_dir, "build.log")
        with open(log, "w"):
            pass
        _run(args, log)
        jobs = os.environ.get("PYMODELMGR_JOBS", str(os.cpu_count() or 2))
        _run(["cmake", "--build", build_dir, "-j", jobs], log)
        # Everything CMake put in build/py/pymodelmgr (the extension and the
        # shim library) goes next to the Python package.
        produced = os.path.join(build_dir, "pymodelmgr")
        if prefix and not os.path.exists(os.path.join(produced, "libmm_torch.so")):
            sys.stderr.write("pymodelmgr: torch was found at %s but CMake did not build the "
                             "libtorch shim; see %s\n" % (prefix, log))
            raise SystemExit(1)
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        for name in os.listdir(produced):
            src = os.path.join(produced, name)
            if name == "_core" + suffix:
                _install_file(src, out_path)
            elif name.endswith(".so"):
                _install_file(src, os.path.join(out_dir, name))
        # A library an earlier build left here and this one did not make (the shim, after
        # PYMODELMGR_BUILD_TORCH=0) must not reach the wheel.
        made = set(os.listdir(produced)) | {os.path.basename(out_path)}
        for name in os.listdir(out_dir):
            if name.endswith(".so") and name not in made:
                os.remove(os.path.join(out_dir, name))

    def copy_extensions_to_source(self):
        # --inplace (and editable installs) build into build/lib* and then copy
        # into the source tree. Do it ourselves: every .so (setuptools knows only
        # _core, not the shim), each through an atomic rename.
        root = os.path.dirname(os.path.abspath(__file__))
        built = os.path.join(os.path.abspath(self.build_lib), "pymodelmgr")
        for name in os.listdir(built):
            if name.endswith(".so"):
                _install_file(os.path.join(built, name), os.path.join(root, "pymodelmgr", name))

setup(ext_modules=[CMakeExtension("pymodelmgr._core")], cmdclass={"build_ext": CMakeBuild})
