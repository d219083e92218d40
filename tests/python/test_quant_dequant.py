"""Our reference dequantizers and quantizers against the gguf Python package.

The gguf package (gguf.quants) is an independent NumPy implementation of every ggml block
format. Blocks are written into GGUF files with gguf.GGUFWriter; kiln-dequant-dump (a
test-only program, tests/tools/) writes what our dequantizers make of every tensor as .npy,
and `kiln quantize --pure` produces our quantizers' bytes.
"""
import pathlib
import subprocess

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import GGML_QUANT_SIZES

# Byte offsets of the fp16 fields (scales, mins) inside one block of each type. Random
# bytes elsewhere are all valid codes; these get finite random halves instead, so the
# comparison never meets NaN/Inf.
HALF_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
}
FLOAT_TYPES = [T.F16, T.BF16]
DEQUANT_TYPES = FLOAT_TYPES + list(HALF_FIELDS)


@pytest.fixture(scope="session")
def dump_bin(build_dir) -> pathlib.Path:
    path = build_dir / "bin" / "kiln-dequant-dump"
    if not path.exists():
        pytest.fail(f"{path} does not exist: build first (tools/test.sh does)")
    return path


def ordered_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> int64 that increases by one per representable float (and -0 == +0), so a
    difference of these is a distance in ulps."""
    i = a.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def max_ulp_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0
    return int(np.abs(ordered_bits(a) - ordered_bits(b)).max())


def random_blocks(qtype: T, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """n_blocks random blocks of qtype as uint8 (n_blocks, type_size)."""
    _, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        # Mix of magnitudes, both signs, some subnormal halves and some exact zeros.
        halves = (rng.standard_normal(n_blocks) * 10.0 ** rng.integers(-7, 2, n_blocks)).astype(np.float16)
        halves[rng.random(n_blocks) < 0.02] = 0
        raw[:, off:off + 2] = halves.view(np.uint8).reshape(n_blocks, 2)
    return raw


def random_float_tensor(qtype: T, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    x = (rng.standard_normal((rows, cols)) * 10.0 ** rng.integers(-6, 3, (rows, 1))).astype(np.float32)
    if qtype == T.F16:
        return x.astype(np.float16)
    bits = x.view(np.uint32) >> 16  # bf16: the top half of a float32
    return bits.astype(np.uint16)


def dump(dump_bin: pathlib.Path, model: pathlib.Path, out_dir: pathlib.Path, names=()) -> None:
    subprocess.run([str(dump_bin), str(model), str(out_dir), *names], check=True,
                   capture_output=True, text=True, timeout=300)


def test_random_blocks_dequantize_like_gguf_py(dump_bin, tmp_path):
    rng = np.random.default_rng(1234)
    path = tmp_path / "random_blocks.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    expected = {}
    for qtype in DEQUANT_TYPES:
        block_size, _ = GGML_QUANT_SIZES[qtype]
        rows, cols = 6, 4 * max(block_size, 32 * 8)  # several blocks per row, several rows
        if qtype in FLOAT_TYPES:
            data = random_float_tensor(qtype, rows, cols, rng)
            raw = data.view(np.uint8)
        else:
            raw = random_blocks(qtype, rows * cols // block_size, rng).reshape(rows, -1)
        name = f"t_{qtype.name}"
        writer.add_tensor(name, raw, raw_dtype=qtype)  # shape given in bytes
        expected[name] = gguf.quants.dequantize(raw, qtype).reshape(rows, cols)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    dump(dump_bin, path, tmp_path / "out")
    for name, want in expected.items():
        got = np.load(tmp_path / "out" / f"{name}.npy")
        assert np.all(np.isfinite(want)), name
        assert max_ulp_diff(got, want) <= 2, f"{name}: differs from gguf.quants by more than 2 ulp"


def test_every_tensor_of_the_default_model_dequantizes_like_gguf_py(dump_bin, default_model, tmp_path):
    reader = gguf.GGUFReader(str(default_model))
    dump(dump_bin, default_model, tmp_path)
    types_seen = set()
    for t in reader.tensors:
        want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)
        got = np.load(tmp_path / f"{t.name}.npy").reshape(-1)
        assert max_ulp_diff(got, want) <= 2, f"{t.name} ({t.tensor_type.name})"
        types_seen.add(t.tensor_type)
    # The default model holds Q4_1 matrices, a Q8_0 embedding and F32 norms.
    assert {T.Q4_1, T.Q8_0, T.F32} <= types_seen


# ---- our quantizers ------------------------------------------------------------------

# Types gguf.quants can also quantize (ggml's reference recipes): our bytes must match.
PY_QUANTIZABLE = {"Q4_0": T.Q4_0, "Q4_1": T.Q4_1, "Q5_0": T.Q5_0, "Q5_1": T.Q5_1,
                  "Q8_0": T.Q8_0, "F16": T.F16, "BF16": T.BF16}
# K types gguf.quants cannot produce: the dequantized result must be close to the input
# (relative RMS error, Gaussian-like data; bounds from the formats' step sizes).
K_TYPES = {"Q4_K_M": (T.Q4_K, 0.11), "Q5_K_M": (T.Q5_K, 0.055), "Q6_K": (T.Q6_K, 0.03)}


def awkward_matrix(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Gaussian rows at different scales, plus rows with zero, constant and outlier blocks."""
    x = (rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-3, 1, (rows, 1))).astype(np.float32)
    x[0, :64] = 0.0
    x[1, 32:96] = 0.75
    x[2, 7] = 500.0
    x[3, 300] = -500.0
    x[4, :] = np.float32(-0.125)
    return x


def write_f32_model(path: pathlib.Path, tensors: dict) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def f32_source(tmp_path_factory):
    rng = np.random.default_rng(99)
    tensors = {
        "blk.0.ffn_up.weight": awkward_matrix(rng, 24, 512),
        "blk.0.ffn_gate.weight": awkward_matrix(rng, 16, 1024),
        "blk.0.attn_norm.weight": rng.standard_normal(512).astype(np.float32),
    }
    path = tmp_path_factory.mktemp("f32src") / "src.gguf"
    write_f32_model(path, tensors)
    return path, tensors


def quantize_pure(kiln_bin, src: pathlib.Path, dst: pathlib.Path, ftype: str) -> None:
    res = subprocess.run([str(kiln_bin), "quantize", str(src), str(dst), ftype, "--pure", "-t", "2"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("ftype", sorted(PY_QUANTIZABLE))
def test_quantizer_bytes_match_gguf_py(kiln_bin, f32_source, tmp_path, ftype):
    src, tensors = f32_source
    out = tmp_path / f"out_{ftype}.gguf"
    quantize_pure(kiln_bin, src, out, ftype)
    qtype = PY_QUANTIZABLE[ftype]
    reader = gguf.GGUFReader(str(out))
    by_name = {t.name: t for t in reader.tensors}
    for name, data in tensors.items():
        t = by_name[name]
        if data.ndim == 1:  # norms are not quantized
            assert t.tensor_type == T.F32
            continue
        assert t.tensor_type == qtype, name
        want = gguf.quants.quantize(data, qtype)
        got = np.asarray(t.data)
        assert got.view(np.uint8).tobytes() == want.view(np.uint8).tobytes(), f"{name} as {ftype}"


@pytest.mark.parametrize("ftype", sorted(K_TYPES))
def test_k_quantizers_round_trip_through_gguf_py(kiln_bin, f32_source, tmp_path, ftype):
    src, tensors = f32_source
    out = tmp_path / f"out_{ftype}.gguf"
    quantize_pure(kiln_bin, src, out, ftype)
    qtype, bound = K_TYPES[ftype]
    reader = gguf.GGUFReader(str(out))
    by_name = {t.name: t for t in reader.tensors}
    for name, data in tensors.items():
        if data.ndim == 1:
            continue
        t = by_name[name]
        assert t.tensor_type == qtype, name
        got = gguf.quants.dequantize(t.data, qtype).reshape(data.shape)
        assert np.all(np.isfinite(got))
        # Row by row (rows have different scales); skip the deliberately odd rows 0-4.
        for r in range(5, data.shape[0]):
            rel = np.sqrt(np.mean((got[r] - data[r]) ** 2)) / np.sqrt(np.mean(data[r] ** 2))
            assert rel <= bound, f"{name} row {r}: relative RMS error {rel:.4f} > {bound}"
        # Zero block stays zero, constant run comes back close, outliers survive.
        assert np.all(got[0, :64] == 0)
        assert np.allclose(got[1, 32:96], 0.75, rtol=0.03)  # coarse 6-bit scale codes
        assert abs(got[2, 7] - 500.0) < 5.0 and abs(got[3, 300] + 500.0) < 5.0
        assert np.allclose(got[4], -0.125, rtol=0.03)
