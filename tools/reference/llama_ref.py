#!/usr/bin/env python3
"""Independent Llama forward pass in numpy float64: the oracle kiln's logits are checked against.

Reads the weights through the `gguf` Python package (its reader and its
dequantizer, not kiln's), runs the textbook computation on the given tokens
with full-precision activations and no KV cache quantization, and writes the
float32 logits of every position as .npy, shape (n_tokens, n_vocab).

    python3 tools/reference/llama_ref.py MODEL.gguf --tokens "1 2 3" --out ref.npy
    python3 tools/reference/llama_ref.py MODEL.gguf --tokens-file toks.txt --out ref.npy

RoPE uses the adjacent-pair ("normal") layout: GGUF's llama converter permutes
the Q/K rows so that this matches the original model.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class LlamaReference:
    def __init__(self, path: str):
        self.reader = GGUFReader(path)
        arch = self.field("general.architecture")
        if arch != "llama":
            raise SystemExit(f"{path}: architecture {arch!r}, the reference runs llama only")
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.dim = int(self.field("llama.embedding_length"))
        self.n_layers = int(self.field("llama.block_count"))
        self.ffn = int(self.field("llama.feed_forward_length"))
        self.n_heads = int(self.field("llama.attention.head_count"))
        self.n_kv_heads = int(self.field("llama.attention.head_count_kv", self.n_heads))
        self.head_dim = int(self.field("llama.attention.key_length", self.dim // self.n_heads))
        self.rope_dim = int(self.field("llama.rope.dimension_count", self.head_dim))
        self.rope_base = float(self.field("llama.rope.freq_base", 10000.0))
        self.eps = float(self.field("llama.attention.layer_norm_rms_epsilon", 1e-5))
        self.cache: dict[str, np.ndarray] = {}

    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            if default is None:
                raise SystemExit(f"missing metadata key {key}")
            return default
        return f.contents()

    def weight(self, name: str) -> np.ndarray:
        """Dequantized tensor as float64, numpy shape = reversed GGUF ne ((rows, cols) for matrices)."""
        if name not in self.cache:
            t = self.tensors[name]
            w = dequantize(t.data, t.tensor_type).astype(np.float64)
            self.cache[name] = w.reshape([int(x) for x in reversed(t.shape)])
        return self.cache[name]

    def rmsnorm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x (n, heads, head_dim): rotate pairs (2i, 2i+1) of the first rope_dim dims."""
        half = self.rope_dim // 2
        inv_freq = self.rope_base ** (-2.0 * np.arange(half) / self.rope_dim)
        if "rope_freqs.weight" in self.tensors:
            inv_freq = inv_freq / self.weight("rope_freqs.weight")
        theta = positions[:, None].astype(np.float64) * inv_freq[None, :]  # (n, half)
        cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        out = x.copy()
        a, b = x[..., 0:self.rope_dim:2], x[..., 1:self.rope_dim:2]
        out[..., 0:self.rope_dim:2] = a * cos - b * sin
        out[..., 1:self.rope_dim:2] = a * sin + b * cos
        return out

    def forward(self, tokens: list[int], logits_chunk: int = 256) -> np.ndarray:
        n = len(tokens)
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv_heads
        pos = np.arange(n)
        x = self.weight("token_embd.weight")[np.asarray(tokens)]  # (n, dim)
        causal = np.triu(np.full((n, n), -np.inf), k=1)
        for layer in range(self.n_layers):
            p = f"blk.{layer}."
            xb = self.rmsnorm(x, self.weight(p + "attn_norm.weight"))
            q = (xb @ self.weight(p + "attn_q.weight").T).reshape(n, nh, hd)
            k = (xb @ self.weight(p + "attn_k.weight").T).reshape(n, nkv, hd)
            v = (xb @ self.weight(p + "attn_v.weight").T).reshape(n, nkv, hd)
            q, k = self.rope(q, pos), self.rope(k, pos)
            att = np.empty((n, nh, hd))
            group = nh // nkv
            for h in range(nh):
                g = h // group
                scores = q[:, h, :] @ k[:, g, :].T / np.sqrt(hd) + causal  # (n, n)
                scores -= scores.max(axis=1, keepdims=True)
                prob = np.exp(scores)
                prob /= prob.sum(axis=1, keepdims=True)
                att[:, h, :] = prob @ v[:, g, :]
            x = x + att.reshape(n, nh * hd) @ self.weight(p + "attn_output.weight").T
            xb = self.rmsnorm(x, self.weight(p + "ffn_norm.weight"))
            gate = xb @ self.weight(p + "ffn_gate.weight").T
            up = xb @ self.weight(p + "ffn_up.weight").T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ self.weight(p + "ffn_down.weight").T
            for name in list(self.cache):  # keep memory at one layer's weights
                if name.startswith(p):
                    del self.cache[name]
        xn = self.rmsnorm(x, self.weight("output_norm.weight"))
        out_name = "output.weight" if "output.weight" in self.tensors else "token_embd.weight"
        w_out = self.weight(out_name)
        logits = np.empty((n, w_out.shape[0]), dtype=np.float32)
        for s in range(0, n, logits_chunk):
            logits[s:s + logits_chunk] = xn[s:s + logits_chunk] @ w_out.T
        return logits


def parse_tokens(text: str) -> list[int]:
    return [int(t) for t in text.replace(",", " ").split()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--tokens", help='token ids, e.g. "1 2 3"')
    g.add_argument("--tokens-file", help="file with token ids separated by spaces/newlines")
    ap.add_argument("--out", required=True, help="output .npy (float32, (n_tokens, n_vocab))")
    args = ap.parse_args(argv)
    tokens = parse_tokens(args.tokens if args.tokens else open(args.tokens_file).read())
    if not tokens:
        ap.error("no tokens")
    ref = LlamaReference(args.model)
    np.save(args.out, ref.forward(tokens))
    print(f"llama_ref: {len(tokens)} positions -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
