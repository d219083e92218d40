"""The CLI on hostile inputs and outputs: outputs that are not regular files, GGUFs with bytes
and values a well-behaved converter never writes, and option values at the edges. Every case
must end with a clear message naming what is wrong (exit 1), never a crash, a hang or a
replaced special file."""
import json
import os
import pathlib
import stat
import struct
import subprocess

import gguf
import numpy as np
import pytest

VOCAB = pathlib.Path(__file__).resolve().parents[1] / "data" / "vocab" / "ggml-vocab-llama-spm.gguf"

# GGUF value types (the on-disk ids).
U32, F32_T, STR, ARR = 4, 6, 8, 9


def kiln(kiln_bin, *args, timeout=120):
    return subprocess.run([str(kiln_bin), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def gguf_bytes(kvs, tensors):
    """A GGUF v3 file from raw parts, with no checks: kvs are (key, type, value) with STR values
    as bytes (any bytes), tensors are (name bytes, shape, ggml type id, data bytes)."""
    def s(b):
        return struct.pack("<Q", len(b)) + b
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, t, v in kvs:
        out += s(key.encode()) + struct.pack("<I", t)
        out += s(v) if t == STR else struct.pack({U32: "<I", F32_T: "<f"}[t], v)
    offset, data = 0, b""
    for name, shape, ttype, raw in tensors:
        out += s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", ttype, offset)
        data += raw + b"\0" * (-len(raw) % 32)
        offset = len(data)
    out += b"\0" * (-len(out) % 32)
    return out + data


@pytest.fixture(scope="module")
def tiny(kiln_bin, tmp_path_factory):
    """A float32 tiny Llama (kiln synth --preset tiny) with a real SentencePiece vocabulary."""
    path = tmp_path_factory.mktemp("hostile") / "tiny.gguf"
    r = kiln(kiln_bin, "synth", "--preset", "tiny", "--type", "F32", "--vocab-from", VOCAB,
             "--out", path, "-t", "2")
    assert r.returncode == 0, r.stderr
    return path


# ---- outputs that are not regular files (gguf/writer.cpp) ---------------------------------

def test_quantize_refuses_a_fifo_output_and_keeps_it(kiln_bin, tiny, tmp_path):
    fifo = tmp_path / "out.gguf"
    os.mkfifo(fifo)
    r = kiln(kiln_bin, "quantize", tiny, fifo, "Q8_0", "-t", "2", timeout=60)
    assert r.returncode == 1, r.stderr
    assert f"{fifo}: is a FIFO; refusing to replace it" in r.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def test_synth_refuses_a_directory_output_naming_it(kiln_bin, tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    r = kiln(kiln_bin, "synth", "--preset", "tiny", "--type", "F32", "--vocab-from", VOCAB,
             "--out", out, "-t", "2")
    assert r.returncode == 1
    assert f"{out}: is a directory" in r.stderr and "Success" not in r.stderr, r.stderr
    assert out.is_dir() and not list(out.iterdir())


def test_quantize_through_a_symlink_replaces_its_target(kiln_bin, tiny, tmp_path):
    target = tmp_path / "v1.gguf"
    target.write_bytes(b"old")
    link = tmp_path / "current.gguf"
    link.symlink_to("v1.gguf")
    r = kiln(kiln_bin, "quantize", tiny, link, "Q8_0", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == "v1.gguf"
    reader = gguf.GGUFReader(str(target))
    assert any(t.tensor_type == gguf.GGMLQuantizationType.Q8_0 for t in reader.tensors)


# ---- GGUFs a converter never writes ----------------------------------------------------------

def test_quantize_survives_a_tensor_with_a_zero_dimension(kiln_bin, tmp_path):
    # ggml allows empty tensors; quantize used to divide by ne[0] == 0 (SIGFPE).
    src = tmp_path / "empty.gguf"
    src.write_bytes(gguf_bytes([("general.architecture", STR, b"llama")],
                               [(b"w", [0], 0, b""), (b"blk.0.ffn_up.weight", [0, 4], 0, b"")]))
    out = tmp_path / "out.gguf"
    r = kiln(kiln_bin, "quantize", src, out, "Q8_0", "-t", "2")
    assert r.returncode == 0, r.stderr
    info = json.loads(kiln(kiln_bin, "info", out, "--json", "--tensors").stdout)
    assert [(t["name"], t["shape"], t["bytes"]) for t in info["tensors"]] == [
        ("w", [0], 0), ("blk.0.ffn_up.weight", [0, 4], 0)]


def test_info_json_replaces_invalid_utf8(kiln_bin, tmp_path):
    path = tmp_path / "bad-utf8.gguf"
    path.write_bytes(gguf_bytes(
        [("general.architecture", STR, b"ll\xffama"), ("general.name", STR, b"\xfename"),
         ("tokenizer.ggml.pre", STR, b"pre\xc3")],
        [(b"w\xff.weight", [4], 0, b"\0" * 16)]))
    for extra in ([], ["--tensors"]):
        r = kiln(kiln_bin, "info", path, "--json", *extra)
        assert r.returncode == 0, r.stderr
        j = json.loads(r.stdout)
        assert j["architecture"] == "ll\ufffdama"
        assert j["name"] == "\ufffdname"
        assert j["tokenizer_pre"] == "pre\ufffd"
    assert j["tensors"][0]["name"] == "w\ufffd.weight"


def test_run_stops_on_non_finite_logits(kiln_bin, tiny, tmp_path):
    # NaN weights (the loader cannot read every weight) give NaN logits: an error naming the
    # problem, not a stream of <unk> and exit 0.
    broken = tmp_path / "nan.gguf"
    broken.write_bytes(tiny.read_bytes())
    reader = gguf.GGUFReader(str(broken), "r+")
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    norm.data[:] = np.nan
    reader.data.flush()
    del reader
    r = kiln(kiln_bin, "run", "-m", broken, "-p", "Hello", "-n", "4", "--temp", "0", "-t", "2")
    assert r.returncode == 1
    assert "logits at position" in r.stderr and "are not finite" in r.stderr, r.stderr
    assert r.stdout == ""


# ---- options at the edges ---------------------------------------------------------------------

def test_synth_rejects_impossible_rope_bases(kiln_bin, tmp_path):
    for value, message in [("nan", "--rope-base must be a finite number, got 'nan'"),
                           ("inf", "--rope-base must be a finite number, got 'inf'"),
                           ("-1", "--rope-base expects a number > 0, got '-1'"),
                           ("0", "--rope-base expects a number > 0, got '0'"),
                           ("1e10000", "--rope-base must be a finite number")]:
        out = tmp_path / "x.gguf"
        r = kiln(kiln_bin, "synth", "--preset", "tiny", "--vocab-from", VOCAB, "--out", out,
                 "--rope-base", value)
        assert r.returncode == 1 and message in r.stderr, (value, r.stderr)
        assert not out.exists()


def test_run_temperature_edges(kiln_bin, tiny):
    base = ("run", "-m", tiny, "-p", "Hello", "-n", "4", "-t", "2")
    for value in ("inf", "nan", "-inf", "1e39"):
        r = kiln(kiln_bin, *base, "--temp", value)
        assert r.returncode == 1, value
        assert f"--temp must be a finite number, got '{value}'" in r.stderr, r.stderr
    r = kiln(kiln_bin, *base, "--temp", "-0.5")
    assert r.returncode == 1 and "--temp expects a number >= 0, got '-0.5'" in r.stderr
    # A temperature too small for the sampler's 1/T scaling is the greedy limit, not an error.
    greedy = kiln(kiln_bin, *base, "--temp", "0")
    tiny_t = kiln(kiln_bin, *base, "--temp", "1e-39", "--seed", "3")
    assert greedy.returncode == 0 and tiny_t.returncode == 0, tiny_t.stderr
    assert tiny_t.stdout == greedy.stdout


def test_run_checks_ids_out_before_generating(kiln_bin, tiny, tmp_path):
    ids = tmp_path / "no_such_dir" / "ids.txt"
    r = kiln(kiln_bin, "run", "-m", tiny, "-p", "Hello", "-n", "4", "--temp", "0", "-t", "2",
             "--ids-out", ids)
    assert r.returncode == 1
    assert f"cannot open --ids-out '{ids}' for writing" in r.stderr, r.stderr
    assert r.stdout == "" and "generation:" not in r.stderr


def test_logits_prompt_file_that_is_a_directory_is_named(kiln_bin, tiny, tmp_path):
    r = kiln(kiln_bin, "logits", "-m", tiny, "--prompt-file", tmp_path, "--out", tmp_path / "x.npy")
    assert r.returncode == 1
    assert f"cannot read --prompt-file '{tmp_path}': it is a directory" in r.stderr, r.stderr
