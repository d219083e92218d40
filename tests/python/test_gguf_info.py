"""kiln info and the GGUF reader/writer, checked against the gguf Python package."""
import json
import pathlib
import subprocess

import gguf
import numpy as np
import pytest

VOCAB_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "vocab"


def kiln_info(kiln_bin, path, *extra):
    out = subprocess.run([str(kiln_bin), "info", str(path), "--json", *extra],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def check_against_gguf_py(kiln_bin, path):
    ours = kiln_info(kiln_bin, path, "--tensors")
    ref = gguf.GGUFReader(str(path))
    arch = field(ref, "general.architecture")
    assert ours["architecture"] == arch
    assert ours["name"] == field(ref, "general.name")
    assert ours["file_type"] == field(ref, "general.file_type")
    assert ours["metadata_count"] == len([k for k in ref.fields if not k.startswith("GGUF.")])
    for ours_key, ref_key in [("context_length", "context_length"),
                              ("embedding_length", "embedding_length"),
                              ("block_count", "block_count"),
                              ("feed_forward_length", "feed_forward_length"),
                              ("head_count", "attention.head_count"),
                              ("head_count_kv", "attention.head_count_kv")]:
        assert ours[ours_key] == field(ref, f"{arch}.{ref_key}"), ours_key
    tokens = ref.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
        assert ours["vocab_size"] == len(tokens.data)
    assert ours["tokenizer_model"] == field(ref, "tokenizer.ggml.model")
    assert ours["has_chat_template"] == ("tokenizer.chat_template" in ref.fields)
    assert ours["tensor_count"] == len(ref.tensors)
    assert ours["parameter_count"] == sum(int(t.n_elements) for t in ref.tensors)
    by_name = {t["name"]: t for t in ours["tensors"]}
    types = {}
    for t in ref.tensors:
        mine = by_name[t.name]
        assert mine["type"] == t.tensor_type.name
        assert mine["shape"] == [int(x) for x in t.shape]
        assert mine["offset"] == int(t.data_offset)
        assert mine["bytes"] == int(t.n_bytes)
        c = types.setdefault(t.tensor_type.name, {"count": 0, "bytes": 0})
        c["count"] += 1
        c["bytes"] += int(t.n_bytes)
    assert ours["tensor_types"] == types


def test_info_default_model(kiln_bin, default_model):
    check_against_gguf_py(kiln_bin, default_model)
    text = subprocess.run([str(kiln_bin), "info", str(default_model)], capture_output=True,
                          text=True, check=True).stdout
    assert "architecture:    llama" in text and "Q4_1" in text


@pytest.mark.parametrize("name", sorted(p.name for p in VOCAB_DIR.glob("*.gguf")) or ["none"])
def test_info_vocab_files(kiln_bin, name):
    if name == "none":
        pytest.skip("no vocab files in tests/data/vocab")
    check_against_gguf_py(kiln_bin, VOCAB_DIR / name)


def write_sample_with_gguf_py(path):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("cross-check")
    w.add_uint8("t.u8", 250)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 65000)
    w.add_int16("t.i16", -32000)
    w.add_uint32("t.u32", 123456789)
    w.add_int32("t.i32", -123456789)
    w.add_uint64("t.u64", 1 << 50)
    w.add_int64("t.i64", -(1 << 50))
    w.add_float32("t.f32", 0.125)
    w.add_float64("t.f64", 1e300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo <|im_end|> \u4e16\u754c")
    w.add_array("t.strs", ["a", "", "\U0001F600"])
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, 1.5])
    w.add_array("t.nested", [[1, 2], ["x"]])
    rng = np.random.default_rng(0)
    w.add_tensor("f32.weight", rng.standard_normal((3, 64)).astype(np.float32))
    w.add_tensor("f16.weight", rng.standard_normal((5, 32)).astype(np.float16))
    raw_q8 = rng.integers(0, 255, size=(2, 34 * 2), dtype=np.uint8)
    w.add_tensor("q8.weight", raw_q8, raw_shape=(2, 68), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("vec", np.arange(7, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def fields_as_python(reader):
    out = {}
    for k, f in reader.fields.items():
        if k.startswith("GGUF."):
            continue
        out[k] = (tuple(int(t) for t in f.types), f.contents())
    return out


def test_writer_cross_check(kiln_bin, build_dir, tmp_path):
    """gguf-py writes, we read and rewrite, gguf-py reads ours: same metadata and tensor bytes."""
    theirs = tmp_path / "theirs.gguf"
    ours = tmp_path / "ours.gguf"
    write_sample_with_gguf_py(theirs)
    check_against_gguf_py(kiln_bin, theirs)  # we read what it writes
    subprocess.run([str(build_dir / "bin" / "kiln-gguf-roundtrip"), str(theirs), str(ours)],
                   check=True)
    a, b = gguf.GGUFReader(str(theirs)), gguf.GGUFReader(str(ours))  # it reads what we write
    assert fields_as_python(a) == fields_as_python(b)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.tensor_type == tb.tensor_type
        assert list(ta.shape) == list(tb.shape)
        assert ta.data.tobytes() == tb.data.tobytes()


def test_writer_roundtrips_default_model(kiln_bin, build_dir, default_model, tmp_path):
    out = tmp_path / "copy.gguf"
    subprocess.run([str(build_dir / "bin" / "kiln-gguf-roundtrip"), str(default_model), str(out)],
                   check=True)
    a, b = gguf.GGUFReader(str(default_model)), gguf.GGUFReader(str(out))
    assert fields_as_python(a) == fields_as_python(b)
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.name == tb.name and ta.data.tobytes() == tb.data.tobytes()


@pytest.mark.parametrize("content,message", [
    (b"", "not a GGUF file"),
    (b"hello world, not a model", "not a GGUF file"),
    (b"GGUF\x07\x00\x00\x00" + bytes(16), "unsupported GGUF version 7"),
    (b"GGUF\x03\x00\x00\x00" + (1).to_bytes(8, "little") + bytes(8), "tensor count"),
])
def test_info_rejects_bad_files(kiln_bin, tmp_path, content, message):
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    r = subprocess.run([str(kiln_bin), "info", str(p)], capture_output=True, text=True)
    assert r.returncode == 1
    assert message in r.stderr and str(p) in r.stderr


def test_info_rejects_truncated_model(kiln_bin, default_model, tmp_path):
    p = tmp_path / "truncated.gguf"
    p.write_bytes(default_model.read_bytes()[:5_000_000])
    r = subprocess.run([str(kiln_bin), "info", str(p)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "outside the file" in r.stderr and "at byte" in r.stderr


def test_info_help_and_usage(kiln_bin):
    r = subprocess.run([str(kiln_bin), "info", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--tensors" in r.stdout
    r = subprocess.run([str(kiln_bin), "info", "--bogus"], capture_output=True, text=True)
    assert r.returncode == 1 and "unknown option" in r.stderr
