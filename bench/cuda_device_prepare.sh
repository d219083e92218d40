#!/usr/bin/env bash
# Prepares .devcarry/ for bench/cuda_device_check.sh on a lent GPU machine (which has the
# CUDA driver and toolkit but none of our apt packages, no models, and no network):
#   - a Release CUDA build for sm_90 (H100/H200) in build-cuda/, only the four binaries used;
#   - those binaries and the shared libraries they need that are not in glibc (cpp-httplib,
#     ssl, pcre2, brotli, zlib, Google Benchmark) in .devcarry/bin and .devcarry/lib;
#   - .devcarry/vocab.gguf, a tiny model carrying the default model's vocabulary, which the
#     synthetic models there copy.
# .devcarry/ is ignored through .git/info/exclude; the device tool carries it when asked:
#   run(command="export LD_LIBRARY_PATH=$PWD/.devcarry/lib; bash bench/cuda_device_check.sh
#       .devcarry/bin .devcarry/vocab.gguf", carry=[".devcarry"])
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${CUDA_ARCH:-90}
vocab_source=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}

cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" >/dev/null
cmake --build build-cuda -j"$(nproc)" --target kiln kiln_cuda_kernels_test kiln_cuda_engine_test \
  kiln-cuda-bench

mkdir -p .devcarry/bin .devcarry/lib
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >>.git/info/exclude
bins=(kiln kiln_cuda_kernels_test kiln_cuda_engine_test kiln-cuda-bench)
for b in "${bins[@]}"; do cp build-cuda/bin/"$b" .devcarry/bin/; done
# Every resolved library outside the C runtime (libc, libm, libstdc++, libgcc, the loader).
for b in "${bins[@]}"; do ldd build-cuda/bin/"$b"; done |
  awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|ld-linux-x86-64|libpthread|libdl|librt)\.so' |
  while read -r lib; do cp -L "$lib" .devcarry/lib/; done

if [[ ! -f $vocab_source ]]; then
  echo "no $vocab_source: run tools/fetch_model.sh first (the vocabulary comes from it)" >&2
  exit 1
fi
build-cuda/bin/kiln synth --preset tiny --type Q8_0 --vocab-from "$vocab_source" \
  --out .devcarry/vocab.gguf
du -sh .devcarry
