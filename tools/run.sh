#!/usr/bin/env bash
# The main job: installs what is missing, builds Release, fetches the default
# model (and its Q4_K_M made by kiln quantize), and serves it with `kiln serve`
# on http://127.0.0.1:11434 (OpenAI-compatible). Extra arguments go to kiln serve
# (e.g. --port 8080 --parallel 8). Stop it with Ctrl-C.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$KILN_ROOT"
bash tools/install_deps.sh
bash tools/build.sh build
bash tools/fetch_model.sh
model=models/SmolLM2-135M-Instruct-Q4_K_M.gguf
[ -f "$model" ] || model=models/SmolLM2-135M-Instruct.Q4_1.gguf
build/bin/kiln info "$model"
log "kiln serve -m $model"
exec build/bin/kiln serve -m "$model" "$@"
