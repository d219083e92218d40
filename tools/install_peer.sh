#!/usr/bin/env bash
# Installs the peer we measure against, llama.cpp via llama-cpp-python, into
# kiln's virtualenv. The first run compiles llama.cpp for this CPU (several
# minutes on 2 cores); pip caches the built wheel, so later runs take seconds.
#
#   bash tools/install_peer.sh [--avx2-only]
#
# --avx2-only builds a second copy for AVX2 + FMA + F16C without any AVX-512
# (the CPU the brief describes) into $KILN_CACHE/llama-avx2, which
# `bench/compare_llamacpp.py --avx2-only` puts first on its path.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bash "$KILN_ROOT/tools/install_deps.sh"
if [ "${1:-}" = "--avx2-only" ]; then
  target="$KILN_CACHE/llama-avx2"
  # (An import test would find the virtualenv's own llama_cpp when the target is empty.)
  if [ ! -d "$target/llama_cpp" ]; then
    log "pip install --target $target (llama.cpp for AVX2 only: minutes)"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
-DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF" \
      "$KILN_PY" -m pip install -q --disable-pip-version-check --no-deps --no-cache-dir \
      --target "$target" -r "$KILN_ROOT/tools/requirements-peer.txt"
  fi
  PYTHONPATH="$target" "$KILN_PY" -c "
import sys, llama_cpp
info = llama_cpp.llama_print_system_info().decode()
print('llama-cpp-python', llama_cpp.__version__, 'in', llama_cpp.__file__, info)
sys.exit('error: that build has AVX-512' if 'AVX512' in info else 0)"
  exit 0
fi
if ! "$KILN_PY" -c "import llama_cpp" 2>/dev/null; then
  log "pip install -r tools/requirements-peer.txt (builds llama.cpp for this CPU)"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$KILN_PY" -m pip install -q --disable-pip-version-check \
    -r "$KILN_ROOT/tools/requirements-peer.txt"
fi
"$KILN_PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
