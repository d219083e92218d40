#!/usr/bin/env python3
"""Accuracy of kiln on a real model: logits over a varied text vs the numpy float64 reference,
the same for llama.cpp (llama-cpp-python) on the same tokens, and greedy generations of kiln and
llama.cpp compared token by token.

    python3 tools/reference/accuracy.py -m models/SmolLM2-135M-Instruct.Q4_1.gguf
        [--kiln build/bin/kiln] [--corpus tools/reference/corpus.txt] [--threads 2]
        [--no-llamacpp] [--no-greedy] [--json OUT.json] [--workdir DIR]
        [--kiln-args=--precise]

--kiln-args: extra options for `kiln logits` and `kiln run` (one string, split like a shell
would; write it as --kiln-args=... since it starts with a dash), e.g. the int16 activation
mode. The reference logits are cached in --workdir, so comparing kiln modes reruns only kiln.

Where greedy outputs differ, the first divergence is checked against the reference logits at
that position: a near-tie (the two tokens' reference logits within --tie-margin) explains it.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import subprocess
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tools"))
from compare_logits import compare  # noqa: E402
from llama_ref import LlamaReference  # noqa: E402

END_OF_TURN = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "</s>"}
GREEDY_PROMPTS = [
    "The capital of France is",
    "Here is a recipe for pancakes:",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "The three laws of thermodynamics are",
    "Q: What is the largest planet in the solar system?\nA:",
]


def summary(s: dict) -> dict:
    return {k: v for k, v in s.items() if k != "per_position"}


def llamacpp_model(model: str, n_ctx: int, threads: int):
    from llama_cpp import Llama
    return Llama(model_path=model, n_ctx=n_ctx, n_batch=512, n_threads=threads, logits_all=True,
                 verbose=False)


def llamacpp_logits(llm, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[:len(tokens)], dtype=np.float32)


def llamacpp_greedy(llm, prompt_ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(prompt_ids)
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        piece = llm.detokenize([tok], special=True).decode("utf-8", "replace")
        if tok == llm.token_eos() or piece in END_OF_TURN:
            break
        out.append(tok)
        llm.eval([tok])
    return out


def kiln_greedy(kiln: str, model: str, prompt: str, n: int, threads: int, work: pathlib.Path,
                extra: list[str]):
    ids = work / "ids.txt"
    subprocess.run([kiln, "run", "-m", model, "-p", prompt, "-n", str(n), "--temp", "0", "-t",
                    str(threads), "--ids-out", str(ids), *extra], check=True, capture_output=True)
    lines = ids.read_text().split("\n")
    return [int(t) for t in lines[0].split()], [int(t) for t in lines[1].split()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--kiln", default=str(REPO / "build/bin/kiln"))
    ap.add_argument("--corpus", default=str(HERE / "corpus.txt"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-type", default="f16")
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--no-greedy", action="store_true")
    ap.add_argument("--n-greedy", type=int, default=64)
    ap.add_argument("--tie-margin", type=float, default=0.5,
                    help="reference logit gap (nats) under which a divergence counts as a near-tie")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--workdir", help="keep intermediate files here")
    ap.add_argument("--kiln-args", default="",
                    help="extra options for kiln logits/run, e.g. --kiln-args=--precise")
    args = ap.parse_args(argv)

    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="kiln_accuracy_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": pathlib.Path(args.model).name}
    kiln_args = shlex.split(args.kiln_args)
    results["kiln_args"] = kiln_args

    # 1. kiln: tokens and logits of the corpus.
    subprocess.run([args.kiln, "logits", "-m", args.model, "--prompt-file", args.corpus, "--out",
                    str(work / "kiln.npy"), "--save-tokens", str(work / "tokens.txt"), "-t",
                    str(args.threads), "--kv-type", args.kv_type, *kiln_args], check=True,
                   capture_output=True)
    tokens = [int(t) for t in (work / "tokens.txt").read_text().split()]
    kiln_logits = np.load(work / "kiln.npy")
    print(f"{len(tokens)} positions of {args.corpus}", file=sys.stderr)

    # 2. reference (cached in the workdir: it is the slow part).
    ref_path = work / "reference.npy"
    if not ref_path.exists():
        np.save(ref_path, LlamaReference(args.model).forward(tokens))
    ref = np.load(ref_path)
    results["positions"] = len(tokens)
    results["kiln_vs_reference"] = summary(compare(ref, kiln_logits))

    # 3. llama.cpp on the same tokens.
    llm = None
    if not args.no_llamacpp:
        llm = llamacpp_model(args.model, max(2048, len(tokens) + 16), args.threads)
        llama_logits = llamacpp_logits(llm, tokens)
        results["llamacpp_vs_reference"] = summary(compare(ref, llama_logits))
        results["kiln_vs_llamacpp"] = summary(compare(llama_logits, kiln_logits))

    print(f"{'':24s} {'mean KL':>10s} {'max KL':>10s} {'top-1':>8s} {'max|diff|':>10s}")
    for key in ("kiln_vs_reference", "llamacpp_vs_reference", "kiln_vs_llamacpp"):
        if key in results:
            s = results[key]
            print(f"{key:24s} {s['mean_kl']:10.3e} {s['max_kl']:10.3e} "
                  f"{100 * s['top1_agreement']:7.2f}% {s['max_abs_diff']:10.4f}")

    # 4. greedy generations, kiln vs llama.cpp.
    if llm is not None and not args.no_greedy:
        ref_model = LlamaReference(args.model)
        greedy = []
        for prompt in GREEDY_PROMPTS:
            prompt_ids, kiln_ids = kiln_greedy(args.kiln, args.model, prompt, args.n_greedy,
                                               args.threads, work, kiln_args)
            llama_ids = llamacpp_greedy(llm, prompt_ids, args.n_greedy)
            n = min(len(kiln_ids), len(llama_ids))
            first = next((i for i in range(n) if kiln_ids[i] != llama_ids[i]), None)
            if first is None and len(kiln_ids) != len(llama_ids):
                first = n
            entry = {"prompt": prompt, "kiln_tokens": len(kiln_ids), "llamacpp_tokens": len(llama_ids),
                     "first_divergence": first}
            if first is not None and first < n:
                logits = ref_model.forward(prompt_ids + kiln_ids[:first])[-1]
                a, b = kiln_ids[first], llama_ids[first]
                gap = float(abs(logits[a] - logits[b]))
                entry.update(kiln_token=a, llamacpp_token=b, reference_top1=int(np.argmax(logits)),
                             reference_logit_gap=gap, near_tie=gap < args.tie_margin)
            greedy.append(entry)
            status = "identical" if first is None else (
                f"diverge at {first}" + (f", ref gap {entry['reference_logit_gap']:.3f}"
                                         f" ({'near-tie' if entry['near_tie'] else 'NOT a near-tie'})"
                                         if "reference_logit_gap" in entry else ""))
            print(f"greedy {prompt[:40]!r:44s} {status}")
        results["greedy"] = greedy

    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
