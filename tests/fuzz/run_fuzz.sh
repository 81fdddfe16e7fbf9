#!/usr/bin/env bash
# Builds the tokenizer fuzz target with clang (libFuzzer + ASan/UBSan) and
# runs it for a bounded time on a copy of the seed corpus (the tree's corpus
# is never written to).  Usage: tests/fuzz/run_fuzz.sh [seconds=60]
# Exit status is libFuzzer's: non-zero on a crash, leak, or timeout.
set -euo pipefail
secs=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${FUZZ_BUILD_DIR:-$root/build/fuzz}
mkdir -p "$out"
CC=${CC:-clang}
srcs=("$root"/csrc/tok/*.c "$root"/csrc/base/mm_alloc.c "$root"/csrc/base/mm_err.c
      "$root"/csrc/base/mm_log.c "$root"/csrc/base/mm_hash.c)
"$CC" -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$root"/csrc/tok -I"$root"/csrc/base $(pkg-config --cflags jansson libutf8proc oniguruma) \
  "$root"/tests/fuzz/fuzz_tok.c "${srcs[@]}" \
  $(pkg-config --libs jansson libutf8proc oniguruma) -lpthread -lm -o "$out/fuzz_tok"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$root"/tests/fuzz/corpus/* "$work"/
cd "$out"
ASAN_OPTIONS=detect_leaks=1 "$out/fuzz_tok" "$work" -max_total_time="$secs" -max_len=4096 \
  -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
