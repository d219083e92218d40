#!/usr/bin/env bash
# The main job: installs what is missing, builds Release, fetches the default
# model, and runs kiln on it. Extra arguments go to the kiln command.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$KILN_ROOT"
bash tools/install_deps.sh
bash tools/build.sh build
bash tools/fetch_model.sh
model=models/SmolLM2-135M-Instruct-Q4_K_M.gguf
[ -f "$model" ] || model=models/SmolLM2-135M-Instruct.Q4_1.gguf
log "kiln info $model"
exec build/bin/kiln info "$model" "$@"
