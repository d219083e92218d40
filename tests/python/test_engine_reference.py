"""kiln's logits against the independent numpy float64 reference (tools/reference/llama_ref.py)
on tiny synthetic Llama models written by `kiln synth` (our GGUF writer), one per weight type.

The reference reads the same file through the `gguf` Python package and its dequantizer, so the
only differences left are kiln's arithmetic: activation quantization inside the quantized matmul
kernels, the F16 KV cache, float32 accumulation order.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

VOCAB = "tests/data/vocab/ggml-vocab-llama-spm.gguf"  # 32000 tokens, SentencePiece
N_POSITIONS = 64


def synth(kiln_bin, repo_root, out, weight_type, *extra):
    cmd = [str(kiln_bin), "synth", "--out", str(out), "--vocab-from", str(repo_root / VOCAB),
           "--dim", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "512",
           "--ctx", "256", "--type", weight_type, *extra]
    subprocess.run(cmd, check=True, capture_output=True)


def tokens(n, vocab=32000, seed=0):
    rng = np.random.default_rng(seed)
    return [1] + rng.integers(3, vocab, size=n - 1).tolist()


def kiln_logits(kiln_bin, model, toks, out, kv_type="f16", batch=None):
    cmd = [str(kiln_bin), "logits", "-m", str(model), "--tokens", " ".join(map(str, toks)),
           "--out", str(out), "--kv-type", kv_type, "-t", "2"]
    if batch:
        cmd += ["-b", str(batch)]
    subprocess.run(cmd, check=True, capture_output=True)
    return np.load(out)


def reference_logits(repo_root, model, toks, out):
    subprocess.run([sys.executable, str(repo_root / "tools/reference/llama_ref.py"), str(model),
                    "--tokens", " ".join(map(str, toks)), "--out", str(out)],
                   check=True, capture_output=True)
    return np.load(out)


def compare(repo_root, ref, cand):
    sys.path.insert(0, str(repo_root / "tools"))
    from compare_logits import compare as cmp  # noqa: E402
    return cmp(ref, cand)


# (name, --type, extra synth flags)
VARIANTS = [
    ("f32_gqa_untied", "F32", []),
    ("f32_tied_rope_freqs", "F32", ["--tied", "--rope-freqs", "--rope-base", "500000"]),
    ("f16_gqa", "F16", []),
    ("q8_0", "Q8_0", ["--tied"]),
    ("q4_k", "Q4_K", ["--rope-freqs"]),
    ("q6_k", "Q6_K", []),
]


@pytest.fixture(scope="module")
def variant_logits(kiln_bin, repo_root, tmp_path_factory):
    """name -> (reference logits, kiln logits with F32 KV cache, kiln logits with F16 KV cache)."""
    d = tmp_path_factory.mktemp("synth")
    toks = tokens(N_POSITIONS)
    out = {}
    for name, wtype, extra in VARIANTS:
        model = d / f"{name}.gguf"
        synth(kiln_bin, repo_root, model, wtype, *extra)
        ref = reference_logits(repo_root, model, toks, d / f"{name}_ref.npy")
        # Batch 24 splits the prompt into three forward calls.
        k32 = kiln_logits(kiln_bin, model, toks, d / f"{name}_f32.npy", "f32", batch=24)
        k16 = kiln_logits(kiln_bin, model, toks, d / f"{name}_f16.npy", "f16")
        out[name] = (ref, k32, k16)
    return out


@pytest.mark.parametrize("name", ["f32_gqa_untied", "f32_tied_rope_freqs"])
def test_f32_weights_f32_cache_match_reference_closely(repo_root, variant_logits, name):
    ref, k32, _ = variant_logits[name]
    assert k32.shape == ref.shape == (N_POSITIONS, 32000)
    assert np.abs(ref - k32).max() < 1e-3


@pytest.mark.parametrize("name", ["f32_gqa_untied", "f32_tied_rope_freqs", "f16_gqa"])
def test_float_weights_with_f16_cache(repo_root, variant_logits, name):
    ref, _, k16 = variant_logits[name]
    s = compare(repo_root, ref, k16)
    assert s["mean_kl"] < 1e-3 and s["top1_agreement"] >= 0.99, s


@pytest.mark.parametrize("name", ["q8_0", "q4_k", "q6_k"])
def test_quantized_weights_close_to_reference(repo_root, variant_logits, name):
    # The quantized matmuls round activations to 8 bits per 32/256-element block (as
    # llama.cpp does); on these random models that alone costs a mean KL of ~5e-3. A
    # wrong dequantization or layout costs orders of magnitude more.
    ref, k32, k16 = variant_logits[name]
    for cand in (k32, k16):
        s = compare(repo_root, ref, cand)
        assert s["mean_kl"] < 2e-2 and s["top1_agreement"] >= 0.8, s


@pytest.mark.xfail(reason="issue 5 bound: needs matmul activations more precise than 8-bit "
                          "blocks (see bench/RESULTS.md, accuracy)", strict=False)
@pytest.mark.parametrize("name", ["q8_0", "q4_k", "q6_k"])
def test_quantized_weights_meet_issue_bound(repo_root, variant_logits, name):
    ref, _, k16 = variant_logits[name]
    s = compare(repo_root, ref, k16)
    assert s["mean_kl"] < 1e-3 and s["top1_agreement"] >= 0.99, s


def test_synth_rejects_bad_shapes(kiln_bin, repo_root, tmp_path):
    r = subprocess.run([str(kiln_bin), "synth", "--out", str(tmp_path / "x.gguf"), "--vocab-from",
                        str(repo_root / VOCAB), "--dim", "64", "--type", "Q4_K", "--layers", "1",
                        "--heads", "4", "--kv-heads", "2", "--ffn", "128"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "not a multiple of the Q4_K block size 256" in r.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_compare_logits_cli(repo_root, tmp_path):
    a = np.random.default_rng(1).normal(size=(5, 50)).astype(np.float32)
    b = a.copy()
    b[2, 0] = b[2].max() + 5  # changes the top-1 of one position
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    r = subprocess.run([sys.executable, str(repo_root / "tools/compare_logits.py"),
                        str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--json"],
                       check=True, capture_output=True, text=True)
    s = json.loads(r.stdout)
    assert s["top1_agreement"] == pytest.approx(0.8)
    assert s["max_abs_diff"] > 5
    assert s["max_kl"] > 1 and s["mean_kl"] == pytest.approx(s["max_kl"] / 5)
