#!/usr/bin/env python3
"""kiln bench vs llama.cpp (llama-cpp-python) on the same GGUF files, same threads, same prompt
and generation lengths, in one run; prints a markdown table with the ratios.

    python3 bench/compare_llamacpp.py [--kiln build/bin/kiln] [-p 512] [-n 128] [-d 0] [-t 2]
        [-r 3] [--rounds 1] [--model FILE ...] [--prepare] [--kiln-args "--hugepage-weights"]

Both sides measure the same things as llama-bench: pp = one batch of -p random tokens from an
empty context; tg = -n tokens decoded one at a time from an empty context; with -d, both after
that many random tokens already in the context (llama-bench's depth, filled untimed before
each run); mean ± sd over -r repetitions after a warm-up. llama.cpp is driven through llama-cpp-python's low-level API
(llama_decode), so Python adds a few microseconds per token, not a logits copy.

Models by default: models/SmolLM2-135M-Instruct-Q4_K_M.gguf (tools/fetch_model.sh makes it with
kiln quantize) and models/synth-tinyllama-1.1b-Q4_K_M.gguf, which --prepare makes when missing
(kiln synth --preset tinyllama-1.1b --type F16, then kiln quantize ... Q4_K_M; ~2.2 GB of
temporary disk, 0.7 GB kept).
Peak RSS is reported for both: llama.cpp runs in a child process of its own for it. Note that
llama.cpp (CPU_REPACK, on by default) copies the Q4_K tensors it can interleave into anonymous
memory at load, so it does not decode them from the memory-mapped file; kiln decodes from
its panel cache (the same weights pre-packed once into a file of their own, memory-mapped;
--kiln-args=--no-panel-cache: from the model's own blocks).
With --rounds N both engines run N times per model, alternating which goes first, and the
row gives medians and the median of the N rounds' ratios: this machine's memory bandwidth
swings by 2x within seconds, so one run of each can compare two different machines.
--avx2-only measures both as on a CPU without AVX-512 (what the brief describes): kiln under
KILN_ISA=avx2, llama.cpp from its AVX2-only build (`bash tools/install_peer.sh --avx2-only`).
Give it a kiln built with -DKILN_NATIVE=OFF: with -march=native the compiler may use AVX-512
inside kiln's AVX2 files on a CPU that has it, which flatters them.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import multiprocessing
import os
import pathlib
import platform
import random
import resource
import shlex
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
DEFAULT_MODELS = [
    MODELS / "SmolLM2-135M-Instruct-Q4_K_M.gguf",
    MODELS / "synth-tinyllama-1.1b-Q4_K_M.gguf",
]


def prepare(kiln: str) -> None:
    smol = MODELS / "SmolLM2-135M-Instruct-Q4_K_M.gguf"
    src = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not smol.exists() and src.exists():
        subprocess.run([kiln, "quantize", str(src), str(smol), "Q4_K_M"], check=True)
    tiny = MODELS / "synth-tinyllama-1.1b-Q4_K_M.gguf"
    if not tiny.exists():
        f16 = MODELS / "synth-tinyllama-1.1b-F16.gguf"
        vocab = REPO / "tests/data/vocab/ggml-vocab-llama-spm.gguf"
        print(f"making {tiny} (kiln synth + kiln quantize)", file=sys.stderr)
        subprocess.run([kiln, "synth", "--preset", "tinyllama-1.1b", "--type", "F16", "--vocab-from",
                        str(vocab), "--out", str(f16)], check=True)
        subprocess.run([kiln, "quantize", str(f16), str(tiny), "Q4_K_M"], check=True)
        f16.unlink()


def mean_sd(xs):
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def bench_kiln(kiln, model, p, n, d, t, r, extra):
    out = subprocess.run([kiln, "bench", "-m", str(model), "-p", str(p), "-n", str(n), "-d", str(d),
                          "-t", str(t), "-r", str(r), "--json", *extra], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def bench_llamacpp(model, p, n, d, t, r):
    import llama_cpp as L

    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    lm = L.llama_model_load_from_file(str(model).encode(), mparams)
    if not lm:
        raise RuntimeError(f"llama.cpp could not load {model}")
    cparams = L.llama_context_default_params()
    cparams.n_ctx = d + max(p, n) + 16
    cparams.n_batch = max(p, 512 if d else 1)
    cparams.n_ubatch = cparams.n_batch
    cparams.n_threads = t
    cparams.n_threads_batch = t
    ctx = L.llama_init_from_model(lm, cparams)
    vocab = L.llama_model_get_vocab(lm)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    mem = L.llama_get_memory(ctx)
    rng = random.Random(42)

    def decode(tokens):
        arr = (L.llama_token * len(tokens))(*tokens)
        if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed")

    def start_at_depth():
        L.llama_memory_clear(mem, True)
        fill = [rng.randrange(n_vocab) for _ in range(d)]
        for i in range(0, d, cparams.n_batch):
            decode(fill[i:i + cparams.n_batch])
        L.llama_synchronize(ctx)

    def run_pp():
        start_at_depth()
        toks = [rng.randrange(n_vocab) for _ in range(p)]
        t0 = time.perf_counter()
        decode(toks)
        L.llama_synchronize(ctx)
        return p / (time.perf_counter() - t0)

    def run_tg():
        start_at_depth()
        toks = [rng.randrange(n_vocab) for _ in range(n)]
        t0 = time.perf_counter()
        for tok in toks:
            decode([tok])
        L.llama_synchronize(ctx)
        return n / (time.perf_counter() - t0)

    res = {}
    if p:
        run_pp()
        res["pp"] = mean_sd([run_pp() for _ in range(r)])
    if n:
        run_tg()
        res["tg"] = mean_sd([run_tg() for _ in range(r)])
    L.llama_free(ctx)
    L.llama_model_free(lm)
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return res


def bench_llamacpp_in_child(model, p, n, d, t, r):
    """bench_llamacpp in a fresh process, so its peak RSS is llama.cpp's for this model alone."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(bench_llamacpp, (model, p, n, d, t, r))


def median(xs):
    xs = sorted(xs)
    h = len(xs) // 2
    return xs[h] if len(xs) % 2 else (xs[h - 1] + xs[h]) / 2


def print_rounds(model, rounds, args):
    """One table row from several rounds: medians, and the median of the rounds' ratios
    (each round's ratio compares two runs made seconds apart)."""
    def column(key_k, key_l):
        ks = [k[key_k] for k, _ in rounds]
        ls = [ll[key_l][0] for _, ll in rounds]
        ratios = [a / b for a, b in zip(ks, ls)]
        cells = (f"{median(ks):.1f} | {median(ls):.1f} | **{median(ratios):.2f}x** ("
                 + ", ".join(f"{x:.2f}" for x in ratios) + ")")
        return cells
    pp = column("pp_tps", "pp") if args.p else "| |"
    tg = column("tg_tps", "tg") if args.n else "| |"
    frac = median([k["bandwidth_fraction"] for k, _ in rounds])
    rss_k = max(k["peak_rss_bytes"] for k, _ in rounds)
    rss_l = max(ll["peak_rss_bytes"] for _, ll in rounds)
    print(f"| {model.name} | {pp} | {tg} | {100 * frac:.0f}% | {rss_k / 2**20:.0f} MiB | "
          f"{rss_l / 2**20:.0f} MiB |", flush=True)


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default=str(REPO / "build/bin/kiln"))
    ap.add_argument("--model", action="append", help="GGUF file (repeatable)")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-d", "--depth", type=int, default=0,
                    help="tokens already in the context when pp and tg start")
    ap.add_argument("-t", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--prepare", action="store_true", help="make missing benchmark models first")
    ap.add_argument("--kiln-args", default="", help="extra kiln bench flags, e.g. --hugepage-weights")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run both engines this many times per model, alternating which goes "
                         "first; the table gives the medians and the median of the rounds' ratios "
                         "(this machine's memory bandwidth swings within seconds)")
    ap.add_argument("--avx2-only", action="store_true",
                    help="both engines restricted to AVX2 (kiln: KILN_ISA=avx2; llama.cpp: the "
                         "build of tools/install_peer.sh --avx2-only)")
    args = ap.parse_args(argv)
    if args.avx2_only:
        cache = pathlib.Path(os.environ.get("KILN_CACHE", pathlib.Path.home() / ".cache/kiln"))
        peer = cache / "llama-avx2"
        if not (peer / "llama_cpp").is_dir():
            sys.exit(f"error: no AVX2-only llama.cpp in {peer}: run bash tools/install_peer.sh "
                     "--avx2-only first")
        sys.path.insert(0, str(peer))  # the spawned llama.cpp children inherit the path
        os.environ["KILN_ISA"] = "avx2"
    if args.prepare:
        prepare(args.kiln)
    models = [pathlib.Path(m) for m in (args.model or DEFAULT_MODELS)]

    import llama_cpp
    if args.avx2_only:
        info = llama_cpp.llama_print_system_info().decode()
        if "AVX512" in info:
            sys.exit(f"error: {llama_cpp.__file__} was built with AVX-512: {info}")
        print("AVX2 only: kiln under KILN_ISA=avx2, llama.cpp " + info.strip())
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; threads {args.t}; "
          f"llama-cpp-python {llama_cpp.__version__}; pp{args.p} tg{args.n}"
          + (f" @ d{args.depth}" if args.depth else "") + f", {args.r} repetitions"
          + (f"; kiln {args.kiln_args}" if args.kiln_args else "")
          + (f"; {args.rounds} rounds (medians; ratio: median of the rounds' ratios)"
             if args.rounds > 1 else "") + "\n")
    print("| model | kiln pp t/s | llama.cpp pp t/s | pp ratio | kiln tg t/s | llama.cpp tg t/s "
          "| tg ratio | kiln tg / bandwidth bound | kiln peak RSS | llama.cpp peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in models:
        if not model.exists():
            print(f"| {model.name} | missing (run with --prepare) ||||||||", flush=True)
            continue
        rounds = []
        for i in range(max(1, args.rounds)):
            def run_kiln():
                return bench_kiln(args.kiln, model, args.p, args.n, args.depth, args.t, args.r,
                                  shlex.split(args.kiln_args))

            def run_llama():
                return bench_llamacpp_in_child(model, args.p, args.n, args.depth, args.t, args.r)

            # Odd rounds start with llama.cpp, so neither side always runs in the first slot.
            if i % 2 == 0:
                k = run_kiln()
                ll = run_llama()
            else:
                ll = run_llama()
                k = run_kiln()
            rounds.append((k, ll))
        if len(rounds) > 1:
            print_rounds(model, rounds, args)
            continue
        k, ll = rounds[0]
        pp_ratio = k["pp_tps"] / ll["pp"][0] if args.p else float("nan")
        tg_ratio = k["tg_tps"] / ll["tg"][0] if args.n else float("nan")
        print(f"| {model.name} | {k['pp_tps']:.1f} ± {k['pp_tps_sd']:.1f} | {ll['pp'][0]:.1f} ± "
              f"{ll['pp'][1]:.1f} | {pp_ratio:.2f}x | {k['tg_tps']:.1f} ± {k['tg_tps_sd']:.1f} | "
              f"{ll['tg'][0]:.1f} ± {ll['tg'][1]:.1f} | {tg_ratio:.2f}x | "
              f"{100 * k['bandwidth_fraction']:.0f}% | {k['peak_rss_bytes'] / 2**20:.0f} MiB | "
              f"{ll['peak_rss_bytes'] / 2**20:.0f} MiB |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
