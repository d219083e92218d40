#!/usr/bin/env bash
# Installs the peer we measure against, llama.cpp via llama-cpp-python, into
# kiln's virtualenv. The first run compiles llama.cpp for this CPU (several
# minutes on 2 cores); pip caches the built wheel, so later runs take seconds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bash "$KILN_ROOT/tools/install_deps.sh"
if ! "$KILN_PY" -c "import llama_cpp" 2>/dev/null; then
  log "pip install -r tools/requirements-peer.txt (builds llama.cpp for this CPU)"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$KILN_PY" -m pip install -q --disable-pip-version-check \
    -r "$KILN_ROOT/tools/requirements-peer.txt"
fi
"$KILN_PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
