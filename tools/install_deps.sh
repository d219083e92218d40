#!/usr/bin/env bash
# Installs what kiln needs to build and test, skipping what is already there:
# Debian packages (compilers, libraries) and the pinned Python packages in a
# virtualenv. Idempotent: a second run takes seconds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

APT_PACKAGES=(
  build-essential cmake ninja-build ccache git unzip
  clang libclang-rt-14-dev            # libFuzzer
  nlohmann-json3-dev libcpp-httplib-dev libxsimd-dev libpcre2-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-venv python3-pip
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A python3 from elsewhere (pyenv) is fine: only ask apt for Python when none works.
if python3 -c 'import venv, ensurepip' 2>/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do [[ $p == python3* ]] || filtered+=("$p"); done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$KILN_PY" ]; then
  log "creating virtualenv $KILN_VENV"
  mkdir -p "$KILN_CACHE"
  python3 -m venv "$KILN_VENV"
fi
stamp="$KILN_VENV/.kiln-requirements"
if ! cmp -s "$KILN_ROOT/tools/requirements.txt" "$stamp"; then
  log "pip install -r tools/requirements.txt"
  "$KILN_PY" -m pip install -q --disable-pip-version-check -r "$KILN_ROOT/tools/requirements.txt"
  cp "$KILN_ROOT/tools/requirements.txt" "$stamp"
fi
