#!/usr/bin/env bash
# Installs, builds and runs every test: ctest and pytest on the Release build
# (ctest twice: also with the kernels limited to AVX2), the unit tests again under
# AddressSanitizer + UndefinedBehaviorSanitizer, and
# a short libFuzzer run on the GGUF reader. Exits non-zero if anything failed.
#   KILN_FUZZ_SECONDS (default 30)   KILN_SKIP_SANITIZE=1   KILN_SKIP_FUZZ=1
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$KILN_ROOT"

failures=()
step() {  # step NAME command...: runs one step, remembers a failure, goes on
  local name=$1; shift
  log "$name"
  if ! "$@"; then failures+=("$name"); fi
}

bash tools/install_deps.sh || { echo "error: installing dependencies failed" >&2; exit 1; }
bash tools/build.sh build || { echo "error: the Release build failed" >&2; exit 1; }
bash tools/fetch_model.sh || { echo "error: fetching the default model failed" >&2; exit 1; }

step "ctest (Release)" ctest --test-dir build --output-on-failure -j "$KILN_JOBS" --timeout 600
# Again with the kernels limited to AVX2 (the brief's CPU: no AVX-512), whose GEMM and
# pre-packed panels differ from the AVX-512 ones: seconds.
step "ctest (Release, KILN_ISA=avx2)" env KILN_ISA=avx2 \
  ctest --test-dir build --output-on-failure -j "$KILN_JOBS" --timeout 600 -LE "slow|cuda"
step "pytest" env KILN_BUILD_DIR="$KILN_ROOT/build" "$KILN_PY" -m pytest -q tests/python

if [ -z "${KILN_SKIP_SANITIZE:-}" ]; then
  # Built for AVX2-only CPUs (KILN_NATIVE=OFF: the AVX-512 files get their own flags and run
  # after a CPUID check), so that configuration compiles in every run, and its AVX2 kernels,
  # compiled without AVX-512 at hand, run their tests.
  sanitize_build() {
    bash tools/build.sh build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_SANITIZE=ON \
      -DKILN_CUDA=OFF -DKILN_BUILD_BENCH=OFF -DKILN_NATIVE=OFF
  }
  if sanitize_build; then
    step "ctest (ASan+UBSan)" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      ctest --test-dir build-asan --output-on-failure -j "$KILN_JOBS" --timeout 900 -LE "slow|cuda"
  else
    failures+=("sanitizer build")
  fi
fi

if [ -z "${KILN_SKIP_FUZZ:-}" ]; then
  fuzz() {
    if [ ! -f build-fuzz/build.ninja ]; then
      CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DKILN_FUZZ=ON -DKILN_CUDA=OFF \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null || return 1
    fi
    cmake --build build-fuzz -j "$KILN_JOBS" --target fuzz_gguf || return 1
    local corpus=build-fuzz/corpus seeds=build-fuzz/seeds
    mkdir -p "$corpus"
    "$KILN_PY" tests/fuzz/make_seeds.py "$seeds" || return 1
    # Corpus files from the vocab test data make good seeds too (real headers).
    build-fuzz/bin/fuzz_gguf -max_total_time="${KILN_FUZZ_SECONDS:-30}" -rss_limit_mb=2048 \
      -timeout=10 -print_final_stats=1 "$corpus" "$seeds" 2>build-fuzz/fuzz.log
    local rc=$?
    tail -n 15 build-fuzz/fuzz.log
    return $rc
  }
  step "fuzz (GGUF reader, ${KILN_FUZZ_SECONDS:-30} s)" fuzz
fi

if ((${#failures[@]})); then
  echo "FAILED steps: ${failures[*]}" >&2
  exit 1
fi
log "all test steps passed"
