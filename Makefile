# pymodelmgr developer entry points.  README's Quick start uses two of them:
#   make setup   installs every dependency, builds, runs the demo
#   make test    builds what is missing and runs every test (ctest + pytest)
PY     ?= python3
JOBS   ?= 2
CTEST  := ctest --output-on-failure --timeout 300 -j$(JOBS)
C_ONLY := -DMM_BUILD_PYTHON=OFF -DMM_BUILD_TORCH=OFF -DMM_WERROR=ON

.PHONY: setup deps build demo test test-c test-asan test-tsan test-fuzz test-py test-wheel bench clean

setup: build demo

deps:
	bash scripts/install_deps.sh

# Quiet unless V=1: CMake's output goes to build/py/build.log (shown when a step fails).
V ?= 0
build: deps
	PYMODELMGR_VERBOSE=$(V) $(PY) setup.py -q build_ext --inplace

demo: build
	$(PY) -m pymodelmgr demo

test: build test-c test-asan test-tsan test-fuzz test-wheel test-py

test-c:
	cmake -S . -B build/c $(C_ONLY) -DCMAKE_BUILD_TYPE=Debug >/dev/null
	cmake --build build/c -j$(JOBS)
	cd build/c && $(CTEST)

test-asan:
	cmake -S . -B build/asan $(C_ONLY) -DMM_SANITIZE=address -DCMAKE_BUILD_TYPE=Debug >/dev/null
	cmake --build build/asan -j$(JOBS)
	cd build/asan && ASAN_OPTIONS=detect_leaks=1 $(CTEST)

test-tsan:
	cmake -S . -B build/tsan $(C_ONLY) -DMM_SANITIZE=thread -DCMAKE_BUILD_TYPE=Debug >/dev/null
	cmake --build build/tsan -j$(JOBS)
	cd build/tsan && TSAN_OPTIONS=halt_on_error=1 $(CTEST)

# libFuzzer (clang) on the tokenizer.json loader and encode, about a minute.
test-fuzz:
	bash tests/fuzz/run_fuzz.sh 60

test-py: build
	$(PY) -m pytest -q --durations=15 tests/python

# The wheel as a user gets it: pip-built, installed into a fresh venv elsewhere, a real
# MiniLM task run from another folder (scripts/check_wheel.sh; about a minute).
test-wheel: build
	bash scripts/check_wheel.sh

bench: build
	$(PY) benchmarks/bench_overhead.py

clean:
	rm -rf build pymodelmgr/*.so
