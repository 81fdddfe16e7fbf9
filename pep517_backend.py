"""pymodelmgr's PEP 517 build backend: setuptools' own, plus CMake only when needed.

setup.py drives CMake.  A build environment gets the `cmake` package from PyPI only when
no cmake >= 3.18 is on PATH: a system cmake is used as it is (the build stays quick and
reuses build/py from `make build`), and torch is never asked for (see setup.py: the shim
is built against the torch of the environment pip installs into).
"""
import re
import shutil
import subprocess

from setuptools import build_meta as _st
from setuptools.build_meta import *  # noqa: F401,F403 - the hooks this module does not change

_CMAKE_MIN = (3, 18)


def _cmake_requires():
    exe = shutil.which("cmake")
    if exe:
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
            m = re.search(r"version (\d+)\.(\d+)", out)
            if m and (int(m.group(1)), int(m.group(2))) >= _CMAKE_MIN:
                return []
        except (OSError, subprocess.SubprocessError):
            pass
    return ["cmake>=%d.%d" % _CMAKE_MIN]


def get_requires_for_build_wheel(config_settings=None):
    return _st.get_requires_for_build_wheel(config_settings) + _cmake_requires()


def get_requires_for_build_editable(config_settings=None):
    return _st.get_requires_for_build_editable(config_settings) + _cmake_requires()
