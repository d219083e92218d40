#!/usr/bin/env python3
"""Compare two logits files (.npy, shape (n_positions, n_vocab)).

    python3 tools/compare_logits.py REFERENCE.npy CANDIDATE.npy [--per-position] [--json]

Prints max |diff| of the logits, the mean and max KL divergence
KL(softmax(REFERENCE) || softmax(CANDIDATE)) over positions (in nats), and the
top-1 agreement (fraction of positions where both pick the same argmax).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ref: np.ndarray, cand: np.ndarray) -> dict:
    """Statistics of cand against ref; both (n_positions, n_vocab)."""
    if ref.shape != cand.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {cand.shape}")
    if not np.all(np.isfinite(cand)):
        raise ValueError("candidate logits contain NaN or Inf")
    lp, lq = log_softmax(ref), log_softmax(cand)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)  # per position
    top1_ref, top1_cand = ref.argmax(axis=-1), cand.argmax(axis=-1)
    agree = top1_ref == top1_cand
    return {
        "positions": int(ref.shape[0]),
        "max_abs_diff": float(np.abs(ref.astype(np.float64) - cand).max()),
        "mean_kl": float(kl.mean()),
        "max_kl": float(kl.max()),
        "top1_agreement": float(agree.mean()),
        "per_position": {
            "kl": kl.tolist(),
            "top1_ref": top1_ref.tolist(),
            "top1_cand": top1_cand.tolist(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference")
    ap.add_argument("candidate")
    ap.add_argument("--per-position", action="store_true", help="also print one line per position")
    ap.add_argument("--json", action="store_true", help="print the statistics as JSON")
    args = ap.parse_args(argv)
    stats = compare(np.load(args.reference), np.load(args.candidate))
    if args.json:
        if not args.per_position:
            stats.pop("per_position")
        print(json.dumps(stats))
        return 0
    if args.per_position:
        pp = stats["per_position"]
        for i, (kl, a, b) in enumerate(zip(pp["kl"], pp["top1_ref"], pp["top1_cand"])):
            print(f"{i:6d}  kl {kl:.3e}  top1 {a} {b}{'' if a == b else '  DIFF'}")
    print(f"positions:      {stats['positions']}")
    print(f"max |diff|:     {stats['max_abs_diff']:.6g}")
    print(f"mean KL:        {stats['mean_kl']:.6g}")
    print(f"max KL:         {stats['max_kl']:.6g}")
    print(f"top-1 agreement: {100 * stats['top1_agreement']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
