# Shared settings for kiln's scripts (sourced, not run).
KILN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KILN_CACHE="${KILN_CACHE:-$HOME/.cache/kiln}"
# One virtualenv per requirements set, shared by clones on this machine.
_req_hash=$(cat "$KILN_ROOT/tools/requirements.txt" | sha256sum | cut -c1-12)
KILN_VENV="${KILN_VENV:-$KILN_CACHE/venv-$_req_hash}"
KILN_PY="$KILN_VENV/bin/python"
KILN_JOBS="${KILN_JOBS:-$(nproc)}"
log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
