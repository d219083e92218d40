"""`kiln quantize`: type mixture, metadata, accuracy and error handling.

The expected per-tensor types come from `expected_type` below, a transcription of
llama.cpp's llama_tensor_get_type rules for the file types kiln offers (written from the
rules, not from kiln's output); tensors are read back and dequantized with the gguf Python
package, independent of kiln.
"""
import pathlib
import subprocess

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import GGML_QUANT_SIZES

FTYPES = {  # name: (general.file_type, default type of weight matrices)
    "F16": (1, T.F16), "BF16": (32, T.BF16), "Q8_0": (7, T.Q8_0), "Q4_0": (2, T.Q4_0),
    "Q4_1": (3, T.Q4_1), "Q5_0": (8, T.Q5_0), "Q5_1": (9, T.Q5_1), "Q4_K_S": (14, T.Q4_K),
    "Q4_K_M": (15, T.Q4_K), "Q5_K_S": (16, T.Q5_K), "Q5_K_M": (17, T.Q5_K), "Q6_K": (18, T.Q6_K),
}
# Relative RMS error bounds of a re-quantized tensor against its source.
REL_RMS_BOUND = {T.F32: 0.0, T.F16: 1e-3, T.BF16: 8e-3, T.Q8_0: 0.01, T.Q6_K: 0.035,
                 T.Q5_1: 0.07, T.Q5_0: 0.07, T.Q5_K: 0.06, T.Q4_1: 0.13, T.Q4_0: 0.14,
                 T.Q4_K: 0.12}


def block_size(t: T) -> int:
    return GGML_QUANT_SIZES[t][0]


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def expected_type(name, n_dims, ne0, src_type, ftype, n_layer, n_attn_v, has_output, pure=False):
    if not name.endswith("weight") or n_dims < 2 or "_norm.weight" in name:
        return src_type
    _, base = FTYPES[ftype]
    t = base
    if not pure and base not in (T.F16, T.BF16):
        layer = int(name.split(".")[1]) if name.startswith("blk.") else 0
        if name == "output.weight" or (not has_output and name == "token_embd.weight"):
            t = T.Q8_0 if ne0 % block_size(base) else (base if base == T.Q8_0 else T.Q6_K)
        elif "attn_v.weight" in name:
            if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(layer, n_attn_v):
                t = T.Q6_K
            elif ftype == "Q4_K_S" and layer < 4:
                t = T.Q5_K
        elif "ffn_down" in name:
            if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(layer, n_layer):
                t = T.Q6_K
            elif ftype == "Q4_K_S" and layer < n_layer // 8:
                t = T.Q5_K
    if ne0 % block_size(t):
        t = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}.get(t, T.F16)
    return t


def field_value(reader: gguf.GGUFReader, key: str):
    f = reader.fields[key]
    return f.contents()


def run_quantize(kiln_bin, *args):
    # A hang (e.g. in thread shutdown) must fail the test, not stall the suite.
    return subprocess.run([str(kiln_bin), "quantize", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def check_quantized(src_path, out_path, ftype, pure=False):
    """Checks out_path against src_path for file type ftype; returns {type name: count}."""
    src = gguf.GGUFReader(str(src_path))
    out = gguf.GGUFReader(str(out_path))
    assert int(field_value(out, "general.file_type")) == FTYPES[ftype][0]
    assert int(field_value(out, "general.quantization_version")) == 2
    # Every other metadata key is copied unchanged.
    for key, f in src.fields.items():
        if key.startswith("GGUF.") or key in ("general.file_type", "general.quantization_version"):
            continue
        assert key in out.fields, key
        assert out.fields[key].types == f.types, key
        assert out.fields[key].contents() == f.contents(), key

    arch = str(field_value(src, "general.architecture"))
    n_layer = int(field_value(src, f"{arch}.block_count"))
    names = [t.name for t in src.tensors]
    n_attn_v = sum("attn_v.weight" in n for n in names)
    has_output = "output.weight" in names
    assert [t.name for t in out.tensors] == names

    mix = {}
    for s, o in zip(src.tensors, out.tensors):
        assert list(o.shape) == list(s.shape), s.name
        want = expected_type(s.name, len(s.shape), int(s.shape[0]), s.tensor_type, ftype, n_layer,
                             n_attn_v, has_output, pure)
        assert o.tensor_type == want, f"{s.name}: {o.tensor_type.name}, expected {want.name}"
        mix[o.tensor_type.name] = mix.get(o.tensor_type.name, 0) + 1
        if o.tensor_type == s.tensor_type:
            assert np.array_equal(np.asarray(o.data).view(np.uint8), np.asarray(s.data).view(np.uint8)), s.name
            continue
        x = gguf.quants.dequantize(s.data, s.tensor_type).astype(np.float64).reshape(-1)
        y = gguf.quants.dequantize(o.data, o.tensor_type).astype(np.float64).reshape(-1)
        assert np.all(np.isfinite(y)), s.name
        rel = np.sqrt(np.mean((x - y) ** 2)) / max(np.sqrt(np.mean(x ** 2)), 1e-30)
        assert rel <= REL_RMS_BOUND[o.tensor_type], \
            f"{s.name} ({s.tensor_type.name} -> {o.tensor_type.name}): relative RMS error {rel:.4f}"
    return mix


# ---- the default model -----------------------------------------------------------------

@pytest.fixture(scope="module")
def default_q4_k_m(kiln_bin, default_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("q4km") / "model-Q4_K_M.gguf"
    res = run_quantize(kiln_bin, default_model, out, "Q4_K_M")
    assert res.returncode == 0, res.stderr
    return out, res.stdout


def test_default_model_to_q4_k_m(default_model, default_q4_k_m):
    out, stdout = default_q4_k_m
    mix = check_quantized(default_model, out, "Q4_K_M")
    # SmolLM2-135M: rows of 576 cannot hold K blocks (Q4_K -> Q5_0, Q6_K -> Q8_0), the
    # 1536-wide ffn_down can; the tied token embedding is the output matrix.
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32"} == set(mix)
    assert "Q4_K_M" in stdout and "MiB" in stdout
    for type_name, count in mix.items():
        assert f"{type_name}: {count}" in stdout.split("after:")[1]


# ---- a synthetic model with 256-multiple rows, every file type --------------------------

def write_synthetic_llama(path: pathlib.Path, n_layer: int, tied: bool, rng) -> None:
    n_embd, n_ff, n_vocab = 256, 512, 512
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layer)
    w.add_embedding_length(n_embd)
    w.add_name("synthetic")
    w.add_file_type(0)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    for i in range(n_layer):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{part}.weight", mat(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    if not tied:
        w.add_tensor("output.weight", mat(n_vocab, n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    rng = np.random.default_rng(7)
    d = tmp_path_factory.mktemp("synth")
    paths = {}
    for tied in (False, True):
        p = d / f"synth_{'tied' if tied else 'untied'}.gguf"
        write_synthetic_llama(p, 8, tied, rng)
        paths[tied] = p
    return paths


@pytest.mark.parametrize("ftype,tied", [(f, False) for f in ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K", "Q8_0",
                                                               "Q4_0", "F16")] + [("Q4_K_M", True)],
                         ids=lambda v: v if isinstance(v, str) else ("tied" if v else "untied"))
def test_synthetic_model_every_file_type(kiln_bin, synthetic, tmp_path, ftype, tied):
    out = tmp_path / f"out_{ftype}.gguf"
    res = run_quantize(kiln_bin, synthetic[tied], out, ftype, "-t", "2")
    assert res.returncode == 0, res.stderr
    mix = check_quantized(synthetic[tied], out, ftype)
    if ftype == "Q4_K_M":
        # 8 layers: layers 0, 3, 6, 7 get Q6_K for attn_v and ffn_down; plus the output.
        assert mix["Q6_K"] == 4 + 4 + 1


def test_pure_gives_every_matrix_the_same_type(kiln_bin, synthetic, tmp_path):
    out = tmp_path / "pure.gguf"
    res = run_quantize(kiln_bin, synthetic[False], out, "Q4_K_M", "--pure")
    assert res.returncode == 0, res.stderr
    mix = check_quantized(synthetic[False], out, "Q4_K_M", pure=True)
    assert set(mix) == {"Q4_K", "F32"}


# ---- errors: clear message, exit 1, nothing left behind -----------------------------------

def assert_failed_cleanly(res, out: pathlib.Path, *fragments):
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "kiln quantize: error:" in res.stderr
    for frag in fragments:
        assert frag in res.stderr, res.stderr
    assert not out.exists()
    assert not list(out.parent.glob(out.name + "*")), "partial output left behind"


def test_help(kiln_bin):
    res = run_quantize(kiln_bin, "--help")
    assert res.returncode == 0
    assert "Q4_K_M" in res.stdout and "-t N" in res.stdout


def test_unknown_type(kiln_bin, synthetic, tmp_path):
    out = tmp_path / "x.gguf"
    assert_failed_cleanly(run_quantize(kiln_bin, synthetic[False], out, "Q3_XYZ"), out,
                          "unknown TYPE 'Q3_XYZ'", "Q4_K_M")


def test_wrong_argument_count_and_options(kiln_bin, synthetic, tmp_path):
    out = tmp_path / "x.gguf"
    assert_failed_cleanly(run_quantize(kiln_bin, synthetic[False], out), out, "expected IN.gguf OUT.gguf TYPE")
    assert_failed_cleanly(run_quantize(kiln_bin, synthetic[False], out, "Q8_0", "-t", "0"), out, "-t")
    assert_failed_cleanly(run_quantize(kiln_bin, synthetic[False], out, "Q8_0", "--bogus"), out, "--bogus")


def test_missing_input(kiln_bin, tmp_path):
    out = tmp_path / "x.gguf"
    assert_failed_cleanly(run_quantize(kiln_bin, tmp_path / "nope.gguf", out, "Q8_0"), out, "nope.gguf")


def test_unwritable_output(kiln_bin, synthetic, tmp_path):
    out = tmp_path / "no_such_dir" / "x.gguf"
    res = run_quantize(kiln_bin, synthetic[False], out, "Q8_0")
    assert res.returncode == 1 and "no_such_dir" in res.stderr
    assert not out.parent.exists()


def test_output_same_as_input(kiln_bin, synthetic, tmp_path):
    src = tmp_path / "same.gguf"
    src.write_bytes(synthetic[False].read_bytes())
    res = run_quantize(kiln_bin, src, src, "Q8_0")
    assert res.returncode == 1 and "input" in res.stderr
    assert src.read_bytes() == synthetic[False].read_bytes()


def write_one_tensor_model(path: pathlib.Path, name: str, raw: np.ndarray, qtype=None) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(256, np.float32))
    if qtype is None:
        w.add_tensor(name, raw)
    else:
        w.add_tensor(name, raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_input_type_we_cannot_dequantize(kiln_bin, tmp_path):
    src = tmp_path / "iq2.gguf"
    _, type_size = GGML_QUANT_SIZES[T.IQ2_XXS]
    raw = np.zeros((4, type_size), dtype=np.uint8)  # 4 rows of one 256-element block
    write_one_tensor_model(src, "blk.0.ffn_up.weight", raw, T.IQ2_XXS)
    out = tmp_path / "x.gguf"
    assert_failed_cleanly(run_quantize(kiln_bin, src, out, "Q8_0"), out,
                          "blk.0.ffn_up.weight", "IQ2_XXS")


def test_non_finite_weights_are_refused(kiln_bin, tmp_path):
    src = tmp_path / "nan.gguf"
    x = np.ones((4, 256), np.float32)
    x[2, 17] = np.nan
    write_one_tensor_model(src, "blk.0.ffn_up.weight", x)
    out = tmp_path / "x.gguf"
    assert_failed_cleanly(run_quantize(kiln_bin, src, out, "Q4_K_M"), out,
                          "blk.0.ffn_up.weight", "non-finite", "row 2")
