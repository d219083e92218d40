#!/usr/bin/env bash
# One call on a lent GPU machine: the cuda-labelled tests, the CUDA kernel benchmarks and
# `kiln bench --device cuda` on a synthetic Llama-3.2-3B-shaped Q4_K_M, from binaries built
# elsewhere (a CUDA build's bin/ folder) and a small GGUF whose vocabulary the synthetic
# models copy (nothing can be fetched on such a machine). Logs go to $OUT (or ./cuda-out).
#
#   bash bench/cuda_device_check.sh BIN_DIR VOCAB.gguf [steps]
#
# steps: any of tests,engine,bench,profile,profile_prefill,kernels,serve (default: all but the
# profiles, in that order). serve starts `kiln serve --device cuda` on a synthetic model of the default model's
# shape and vocabulary and sends a chat completion, a streamed one and 4 concurrent ones.
# profile runs Nsight Compute over the first kernels of one decode step of the 3B model
# (per-kernel duration and DRAM throughput), profile_prefill the same over the first kernels of
# a 512-token prompt. Each step has its own time limit so one hung
# step leaves the others' results.
set -uo pipefail
bin=${1:?usage: cuda_device_check.sh BIN_DIR VOCAB.gguf [steps]}
vocab=${2:?usage: cuda_device_check.sh BIN_DIR VOCAB.gguf [steps]}
steps=${3:-tests,engine,bench,kernels,serve}
out=${OUT:-./cuda-out}
work=${KILN_DEVICE_WORK:-/tmp/kiln-device}
model="$work/synth-llama-3.2-3b-Q4_K_M.gguf"
mkdir -p "$out" "$work"
threads=$(nproc)
has() { [[ ",$steps," == *",$1,"* ]]; }
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

ncu_summary() {  # kernel, duration, DRAM and memory throughput per launch
  awk '/Context [0-9]/ {name=$0; sub(/^ +(void )?/, "", name); gsub(/\(anonymous namespace\)::/, "", name);
                          sub(/\([^()]*\) \(/, " (", name);
                          sub(/, Context.*/, "", name)}
       /DRAM Throughput/ {dram=$NF} /Memory Throughput/ && $2 == "Throughput" {mem=$NF}
       /Duration/ {print $NF, $(NF-1), "dram%", dram, "mem%", mem, name}' "$1" | head -60
}

stamp device
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv |
  tee "$out/device.txt"

if has tests; then
  stamp kernel tests
  timeout 240 "$bin/kiln_cuda_kernels_test" --gtest_brief=1 >"$out/kernels_test.log" 2>&1
  echo "kernel tests rc=$?"
  grep -E "FAILED|PASSED|Failure|error" "$out/kernels_test.log" | head -40
fi

if has engine; then
  stamp engine tests
  # The default model is not on this machine: a synthetic model of its shape and vocabulary.
  "$bin/kiln" synth --preset smollm2-135m --type Q4_1 --vocab-from "$vocab" -t "$threads" \
    --out "$work/smollm2-shape-Q4_1.gguf" >/dev/null 2>&1
  KILN_CUDA_TEST_MODEL="$work/smollm2-shape-Q4_1.gguf" timeout 300 \
    "$bin/kiln_cuda_engine_test" --gtest_brief=1 >"$out/engine_test.log" 2>&1
  echo "engine tests rc=$?"
  grep -E "FAILED|PASSED|Failure|Expected|Which is|error|top1|of " "$out/engine_test.log" | head -40
fi

if has bench; then
  stamp synth 3b
  if [[ ! -f $model ]]; then
    "$bin/kiln" synth --preset llama-3.2-3b --type F16 --vocab-from "$vocab" -t "$threads" \
      --out "$work/3b-F16.gguf" >/dev/null &&
      "$bin/kiln" quantize -t "$threads" "$work/3b-F16.gguf" "$model" Q4_K_M >/dev/null &&
      rm -f "$work/3b-F16.gguf"
  fi
  stamp kiln bench
  timeout 240 "$bin/kiln" bench -m "$model" --device cuda -p 512 -n 128 -r ${KILN_BENCH_REPS:-3} 2>&1 |
    tee "$out/bench_3b.txt"
  timeout 120 "$bin/kiln" bench -m "$model" --device cuda -p 0 -n 128 -r ${KILN_BENCH_REPS:-3} --decode-batch 8 2>&1 |
    tee "$out/bench_3b_b8.txt"
  # Variants of the same decode in the same call (the machine's speed is only comparable within
  # one call): KILN_CUDA_VARIANTS="NAME=VAR=VALUE ..." (default: without programmatic dependent
  # launch, and with the tensor-core matrix-vector kernel instead of the int8 one).
  for variant in ${KILN_CUDA_VARIANTS:-no-pdl=KILN_CUDA_PDL=0 mma=KILN_CUDA_MATVEC=mma}; do
    name=${variant%%=*}
    setting=${variant#*=}
    echo "-- the same with $setting ($name):"
    env "$setting" timeout 120 "$bin/kiln" bench -m "$model" --device cuda -p 512 -n 128 \
      -r ${KILN_BENCH_REPS:-3} 2>&1 | tee "$out/bench_3b_$name.txt" | grep -E "pp512|tg128|bound"
  done
fi

if has profile; then
  stamp profile
  ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
  timeout 180 "$ncu_bin" --clock-control none --graph-profiling node -c "${KILN_NCU_KERNELS:-45}" \
    --section SpeedOfLight "$bin/kiln" bench -m "$model" --device cuda -p 0 -n 2 -r 1 \
    >"$out/ncu.txt" 2>&1
  echo "ncu rc=$?"
  ncu_summary "$out/ncu.txt"
fi

if has profile_prefill; then
  stamp profile prefill
  ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
  # The first kernels of a 512-token prompt: the embedding, then layer 0 (and part of layer 1).
  timeout 180 "$ncu_bin" --clock-control none -c "${KILN_NCU_PREFILL_KERNELS:-30}" \
    --section SpeedOfLight "$bin/kiln" bench -m "$model" --device cuda -p 512 -n 0 -r 1 \
    >"$out/ncu_prefill.txt" 2>&1
  echo "ncu rc=$?"
  ncu_summary "$out/ncu_prefill.txt"
fi

if has kernels; then
  stamp kernel benchmarks
  timeout 150 "$bin/kiln-cuda-bench" --benchmark_filter="${KILN_CUDA_BENCH_FILTER:-.}" \
    --benchmark_out="$out/kernels_bench.json" --benchmark_out_format=json >"$out/kernels_bench.txt" 2>&1
  echo "kernel bench rc=$?"
  grep -E "device|matmul|attention" "$out/kernels_bench.txt" |
    awk '{print $1, $2, $(NF-3), $(NF-2), $(NF-1), $NF}' | head -120
fi
if has serve; then
  stamp serve
  serve_model="$work/smollm2-shape-Q8_0.gguf"
  "$bin/kiln" synth --preset smollm2-135m --type Q8_0 --vocab-from "$vocab" -t "$threads" \
    --out "$serve_model" >/dev/null 2>&1
  port=${KILN_SERVE_PORT:-11555}
  "$bin/kiln" serve -m "$serve_model" --device "${KILN_SERVE_DEVICE:-cuda}" --port "$port" \
    --parallel 4 >"$out/serve.log" 2>&1 &
  serve_pid=$!
  for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.5
  done
  model_id=$(curl -s "http://127.0.0.1:$port/v1/models" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
  body='{"model": "'"$model_id"'", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}'
  echo "-- chat completion:"
  curl -s "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "$body" | head -c 600
  echo
  echo "-- streamed (first events):"
  curl -sN "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "${body%\}}, \"stream\": true}" | head -n 6
  echo "-- 4 concurrent, finish reasons:"
  for i in 1 2 3 4; do
    curl -s "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
      -d "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["finish_reason"])' &
  done
  wait $(jobs -p | grep -v "^$serve_pid$") 2>/dev/null
  kill "$serve_pid" 2>/dev/null
  wait "$serve_pid" 2>/dev/null
  tail -n 8 "$out/serve.log"
fi

stamp done
# One block to read first in the reply's output tail.
echo "== summary"
grep -h -E "PASSED|FAILED  \]" "$out/kernels_test.log" "$out/engine_test.log" 2>/dev/null
grep -H -E "^(pp512|tg128)" "$out"/bench_3b*.txt 2>/dev/null
