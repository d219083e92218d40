"""kiln tokenize / detokenize: the llama.cpp vocabulary test vectors through the
CLI, round trips, special tokens and errors."""
import pathlib
import subprocess

import pytest

VOCAB_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "vocab"
VOCABS = ["gpt-2", "falcon", "deepseek-llm", "llama-spm", "llama-bpe", "qwen2"]


def read_cases(name):
    """(text bytes, expected ids) per case, split as llama.cpp's test-tokenizer-0 does."""
    raw = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.inp").read_bytes()
    sep = b"\n__ggml_vocab_test__\n"
    texts = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(sep, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(sep)
    outs = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.out").read_text().splitlines()
    assert len(texts) == len(outs) == 46
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]


def tokenize(kiln_bin, model, data: bytes, *flags):
    res = subprocess.run([str(kiln_bin), "tokenize", "-m", str(model), *flags], input=data,
                         capture_output=True, check=True)
    return [int(x) for x in res.stdout.split()]


def detokenize(kiln_bin, model, ids) -> bytes:
    res = subprocess.run([str(kiln_bin), "detokenize", "-m", str(model), *map(str, ids)],
                         capture_output=True, check=True)
    return res.stdout


@pytest.mark.parametrize("name", VOCABS)
def test_vocab_vectors_through_cli(kiln_bin, name):
    model = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    if not model.exists():
        pytest.skip(f"{model.name}: test vectors without a vocabulary file (too large to ship)")
    failures = []
    for text, expected in read_cases(name):
        got = tokenize(kiln_bin, model, text)
        if got != expected:
            failures.append((text, expected, got))
    assert not failures, failures[:3]


@pytest.mark.parametrize("name", ["gpt-2", "llama-spm"])
def test_round_trip_through_cli(kiln_bin, name):
    model = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    for text in ["Hello world", "  two  spaces\n\ttab", "emoji 🦙 and 日本語", "x = [1, 2, 3]\n"]:
        data = text.encode()
        ids = tokenize(kiln_bin, model, data)
        assert detokenize(kiln_bin, model, ids) == data


def test_detokenize_reads_stdin(kiln_bin):
    model = VOCAB_DIR / "ggml-vocab-gpt-2.gguf"
    ids = tokenize(kiln_bin, model, b"from stdin")
    res = subprocess.run([str(kiln_bin), "detokenize", "-m", str(model)],
                         input=" \n".join(map(str, ids)).encode(), capture_output=True, check=True)
    assert res.stdout == b"from stdin"


def test_stdin_is_binary_safe(kiln_bin):
    model = VOCAB_DIR / "ggml-vocab-gpt-2.gguf"
    data = b"nul\x00byte, invalid \xff\xfe, cr\r\nend\n"
    ids = tokenize(kiln_bin, model, data)
    assert ids
    # Invalid bytes become U+FFFD before byte-level BPE (as in llama.cpp).
    assert detokenize(kiln_bin, model, ids) == data.replace(b"\xff", "\ufffd".encode()).replace(
        b"\xfe", "\ufffd".encode())


def test_special_tokens_and_pieces(kiln_bin):
    model = VOCAB_DIR / "ggml-vocab-gpt-2.gguf"
    assert 50256 not in tokenize(kiln_bin, model, b"a<|endoftext|>")
    assert tokenize(kiln_bin, model, b"a<|endoftext|>", "--parse-special")[-1] == 50256
    spm = VOCAB_DIR / "ggml-vocab-llama-spm.gguf"
    assert tokenize(kiln_bin, spm, b"Hi", "--add-special")[0] == 1
    res = subprocess.run([str(kiln_bin), "tokenize", "-m", str(model), "--pieces"],
                         input=b"Hello\n", capture_output=True, check=True)
    assert res.stdout.decode().splitlines() == ["15496\tHello", "198\t\\n"]


def test_default_model_chatml_tokens(kiln_bin, default_model):
    ids = tokenize(kiln_bin, default_model, b"<|im_start|>user\nhi<|im_end|>", "--parse-special")
    assert ids[0] == 1 and ids[-1] == 2
    assert 2 not in tokenize(kiln_bin, default_model, b"<|im_end|>")


def test_help_and_errors(kiln_bin):
    for cmd in ["tokenize", "detokenize"]:
        res = subprocess.run([str(kiln_bin), cmd, "--help"], capture_output=True, check=True)
        assert b"usage: kiln " + cmd.encode() in res.stdout
        res = subprocess.run([str(kiln_bin), cmd], capture_output=True, input=b"")
        assert res.returncode == 1
        assert f"kiln {cmd}: error:".encode() in res.stderr
    model = VOCAB_DIR / "ggml-vocab-gpt-2.gguf"
    res = subprocess.run([str(kiln_bin), "detokenize", "-m", str(model), "50257"],
                         capture_output=True)
    assert res.returncode == 1 and b"50257" in res.stderr
    res = subprocess.run([str(kiln_bin), "detokenize", "-m", str(model), "abc"],
                         capture_output=True)
    assert res.returncode == 1 and b"'abc'" in res.stderr
