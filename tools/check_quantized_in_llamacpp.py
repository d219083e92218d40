#!/usr/bin/env python3
"""Checks a model written by `kiln quantize` against llama.cpp (through llama-cpp-python).

1. Loads our file in llama.cpp and generates a few greedy tokens (the file is one llama.cpp
   accepts and runs).
2. With --source: quantizes the source with llama.cpp's own quantizer to the same file type
   and compares, tensor by tensor, the type chosen (must be identical: the mixture rules),
   whether the bytes are identical, and each side's relative RMS error against the source.

Optional: when llama-cpp-python is not installed it says so and exits 0.

usage: tools/check_quantized_in_llamacpp.py [--model OURS.gguf] [--source SRC.gguf]
                                            [--ftype Q4_K_M]
"""
import argparse
import pathlib
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
FTYPE_NUMBERS = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K_S": 14,
                 "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "BF16": 32}


def relative_rms(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64).reshape(-1)
    y = y.astype(np.float64).reshape(-1)
    return float(np.sqrt(np.mean((x - y) ** 2)) / max(np.sqrt(np.mean(x ** 2)), 1e-30))


def generate(llama_cpp, model: pathlib.Path) -> str:
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=256, n_threads=2, verbose=False)
    out = llm("The capital of France is", max_tokens=12, temperature=0.0)
    return out["choices"][0]["text"]


def compare_with_llamacpp_quantizer(llama_cpp, ours: pathlib.Path, source: pathlib.Path, ftype: str) -> bool:
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        theirs = pathlib.Path(tmp) / "llamacpp.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPE_NUMBERS[ftype]
        params.nthread = 2
        params.allow_requantize = True
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(theirs).encode(), params)
        if rc != 0:
            print(f"llama.cpp's quantizer failed (rc {rc})")
            return False
        src = {t.name: t for t in gguf.GGUFReader(str(source)).tensors}
        a = {t.name: t for t in gguf.GGUFReader(str(ours)).tensors}
        b = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
        ok = set(a) == set(b)
        if not ok:
            print(f"tensor names differ: only ours {set(a) - set(b)}, only llama.cpp {set(b) - set(a)}")
        same_type = same_bytes = 0
        worst = []
        for name in sorted(set(a) & set(b)):
            ta, tb = a[name], b[name]
            if ta.tensor_type != tb.tensor_type:
                print(f"  {name}: kiln {ta.tensor_type.name}, llama.cpp {tb.tensor_type.name}")
                ok = False
                continue
            same_type += 1
            if np.asarray(ta.data).tobytes() == np.asarray(tb.data).tobytes():
                same_bytes += 1
                continue
            x = gguf.quants.dequantize(src[name].data, src[name].tensor_type)
            ea = relative_rms(x, gguf.quants.dequantize(ta.data, ta.tensor_type))
            eb = relative_rms(x, gguf.quants.dequantize(tb.data, tb.tensor_type))
            worst.append((ea - eb, name, ta.tensor_type.name, ea, eb))
        print(f"types identical for {same_type}/{len(a)} tensors; bytes identical for {same_bytes}")
        worst.sort(reverse=True)
        for diff, name, tname, ea, eb in worst[:5]:
            print(f"  differs: {name} ({tname}) rel. RMS error vs source: kiln {ea:.5f}, llama.cpp {eb:.5f}")
        return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=pathlib.Path, default=REPO / "models" / "SmolLM2-135M-Instruct-Q4_K_M.gguf")
    ap.add_argument("--source", type=pathlib.Path, default=None,
                    help="the file OURS was quantized from (enables the comparison with llama.cpp's quantizer)")
    ap.add_argument("--ftype", default="Q4_K_M", choices=sorted(FTYPE_NUMBERS))
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed; skipping the llama.cpp check")
        return 0
    if not args.model.exists():
        print(f"{args.model} does not exist (make it with: kiln quantize SRC.gguf {args.model} {args.ftype})")
        return 1
    text = generate(llama_cpp, args.model)
    print(f"llama.cpp loaded {args.model.name}; greedy continuation: {text!r}")
    ok = bool(text.strip())
    if args.source is not None:
        ok = compare_with_llamacpp_quantizer(llama_cpp, args.model, args.source, args.ftype) and ok
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
