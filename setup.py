"""Builds pymodelmgr's native parts through CMake.

The C core, the tokenizer, the hub client and the `pymodelmgr._core`
extension are one CMake project (CMakeLists.txt at the top); the libtorch
shim joins it when torch is importable.  torch is never a build requirement:
install with `pip install --no-build-isolation .` so the shim is built against
the torch already in the environment.

Environment knobs: PYMODELMGR_SANITIZE=address|thread for a sanitizer build,
PYMODELMGR_BUILD_TORCH=0 to skip the shim, PYMODELMGR_BUILD_TYPE (default
RelWithDebInfo), PYMODELMGR_JOBS (default: all cores), PYMODELMGR_BUILD_DIR
(default build/py).
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


def _torch_prefix():
    if os.environ.get("PYMODELMGR_BUILD_TORCH", "1") == "0":
        return None
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import torch.utils; print(torch.utils.cmake_prefix_path)"],
            check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


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
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        jobs = os.environ.get("PYMODELMGR_JOBS", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", build_dir, "-j", jobs], check=True)
        # Everything CMake put in build/py/pymodelmgr (the extension and the
        # shim library) goes next to the Python package.
        produced = os.path.join(build_dir, "pymodelmgr")
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        for name in os.listdir(produced):
            src = os.path.join(produced, name)
            if name == "_core" + suffix:
                _install_file(src, out_path)
            elif name.endswith(".so"):
                _install_file(src, os.path.join(out_dir, name))

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
