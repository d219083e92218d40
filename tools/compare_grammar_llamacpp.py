#!/usr/bin/env python3
"""llama.cpp's cost of a JSON-schema grammar per generated token, for comparison
with kiln-grammar-bench (bench/grammar_bench.cpp uses the same schemas and
documents).

For each schema: llama-cpp-python's json_schema_to_gbnf grammar, the
document tokenized by llama.cpp, then per token: the grammar sampler's apply()
on a full-vocabulary candidate array (every logit 0) and accept(). Reports CPU
microseconds per token (time.process_time), best of --repeat runs.

usage: python3 tools/compare_grammar_llamacpp.py [--model PATH] [--repeat 3]
"""
import argparse
import ctypes
import json
import pathlib
import time

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import json_schema_to_gbnf

REPO = pathlib.Path(__file__).resolve().parents[1]

NODE = {"type": "object", "properties": {
    "name": {"type": "string"},
    "children": {"type": "array", "items": {"$ref": "#/definitions/node"}}},
    "required": ["name"]}

# Same cases as bench/grammar_bench.cpp.
CASES = {
    "person": (
        {"type": "object", "properties": {
            "name": {"type": "string"}, "age": {"type": "integer"},
            "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
            "email": {"type": "string", "format": "uuid"},
            "city": {"type": "string", "maxLength": 40}},
         "required": ["name", "age", "hobbies"]},
        '{"name": "Ada Lovelace", "age": 36, "hobbies": ["mathematics", "poetry", '
        '"analytical engines"], "city": "London, United Kingdom"}'),
    "array_of_objects": (
        {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer"}, "title": {"type": "string"}, "done": {"type": "boolean"},
            "priority": {"enum": ["low", "medium", "high"]}},
            "required": ["id", "title", "done", "priority"]}},
        '[{"id": 1, "title": "Write the grammar compiler", "done": true, "priority": "high"}, '
        '{"id": 2, "title": "Benchmark the token mask", "done": false, "priority": "medium"}, '
        '{"id": 3, "title": "Sleep", "done": false, "priority": "low"}]'),
    "recursive_tree": (
        # The same language as kiln's {"$ref": "#/$defs/node"} root; llama-cpp-python's
        # converter resolves neither $defs nor a $ref at the root, so the node is inlined.
        dict(NODE, definitions={"node": NODE}),
        '{"name": "root", "children": [{"name": "left", "children": [{"name": "leaf one"}, '
        '{"name": "leaf two"}]}, {"name": "right", "children": [{"name": "deep", "children": '
        '[{"name": "deeper"}]}]}]}'),
    "json_object": (
        {"type": "object"},
        '{"answer": "The capital of France is Paris.", "confidence": 0.97, "sources": '
        '["encyclopedia", "atlas"], "extra": {"checked": true, "count": 2}}'),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    llm = llama_cpp.Llama(args.model, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    data = (llama_cpp.llama_token_data * n_vocab)()
    ids = np.arange(n_vocab, dtype=np.int32)
    for name, (schema, doc) in CASES.items():
        gbnf = json_schema_to_gbnf(json.dumps(schema))
        tokens = llm.tokenize(doc.encode(), add_bos=False, special=False)
        best = float("inf")
        for _ in range(args.repeat):
            smpl = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
            spent = 0.0
            for tok in tokens:
                arr = llama_cpp.llama_token_data_array(
                    data=data, size=n_vocab, selected=-1, sorted=False)
                view = np.ctypeslib.as_array(
                    ctypes.cast(data, ctypes.POINTER(ctypes.c_float * 3 * n_vocab)).contents
                ).view(np.float32).reshape(n_vocab, 3)
                view[:, 0] = ids.view(np.float32)
                view[:, 1] = 0.0
                t0 = time.process_time()
                llama_cpp.llama_sampler_apply(smpl, ctypes.byref(arr))
                llama_cpp.llama_sampler_accept(smpl, tok)
                spent += time.process_time() - t0
                if view[tok, 1] == -np.inf:
                    raise SystemExit(f"{name}: llama.cpp's grammar rejected token {tok}")
            llama_cpp.llama_sampler_free(smpl)
            best = min(best, spent)
        print(f"{name:18s} tokens={len(tokens):3d}  llama.cpp grammar: "
              f"{best / len(tokens) * 1e6:8.1f} us/token (CPU)")


if __name__ == "__main__":
    main()
