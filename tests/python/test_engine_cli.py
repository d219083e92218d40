"""kiln run / logits / bench / synth on the command line: options, errors, determinism."""
import json
import subprocess

import numpy as np
import pytest


def kiln(kiln_bin, *args, check=True):
    r = subprocess.run([str(kiln_bin), *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"kiln {' '.join(map(str, args))} failed:\n{r.stderr}")
    return r


ALL_COMMANDS = ["bench", "detokenize", "grammar", "info", "logits", "quantize", "run", "serve",
                "synth", "template", "tokenize"]


@pytest.mark.parametrize("cmd", ALL_COMMANDS)
def test_help(kiln_bin, cmd):
    r = kiln(kiln_bin, cmd, "--help")
    assert r.stdout.startswith(f"usage: kiln {cmd}")


def test_every_command_is_tested_here(kiln_bin):
    listed = kiln(kiln_bin, "--help").stdout.split("commands:")[1].split("\n\n")[0]
    assert sorted(line.split()[0] for line in listed.strip().splitlines()) == ALL_COMMANDS


@pytest.mark.parametrize("cmd", ALL_COMMANDS)
def test_every_command_rejects_an_unknown_option_the_same_way(kiln_bin, cmd):
    # One parser for every command: the same message, naming the option and the help to read,
    # and nothing done (exit status 1 before any model is opened).
    r = kiln(kiln_bin, cmd, "--no-such-option", check=False)
    assert r.returncode == 1
    assert f"unknown option '--no-such-option' (see kiln {cmd} --help)" in r.stderr


# The model options the commands that run a model share (cli/model_options): each command's help
# must describe every one it accepts, and accept every one it describes.
MODEL_OPTIONS = ["-t, --threads", "--kv-type", "--precise", "--act-precision",
                 "--hugepage-weights", "--no-hugepage-mmap", "--batch-gemm"]


@pytest.mark.parametrize("cmd,device", [("run", True), ("bench", True), ("serve", True),
                                        ("logits", False)])
def test_model_options_are_described_by_every_command_that_takes_them(kiln_bin, cmd, device):
    text = kiln(kiln_bin, cmd, "--help").stdout
    for option in MODEL_OPTIONS + (["--device"] if device else []):
        assert f"  {option} " in text, f"kiln {cmd} --help does not describe {option}"
        # Accepted: a bad value names the option, never "unknown option".
        flag = option.split(", ")[-1]
        r = kiln(kiln_bin, cmd, flag, "bogus-value", check=False)
        assert "unknown option" not in r.stderr, r.stderr
    if not device:
        assert "--device" not in text
        r = kiln(kiln_bin, cmd, "--device", "cpu", check=False)
        assert "unknown option '--device'" in r.stderr


def test_run_greedy_is_deterministic_and_reports_speed(kiln_bin, default_model):
    args = ("run", "-m", default_model, "-p", "The capital of France is", "-n", "12", "--temp", "0",
            "-t", "2")
    a, b = kiln(kiln_bin, *args), kiln(kiln_bin, *args)
    assert a.stdout == b.stdout and "Paris" in a.stdout
    assert "prompt: 6 tokens" in a.stderr or "prompt:" in a.stderr
    assert "generation: 12 tokens" in a.stderr


def test_run_sampling_follows_the_seed(kiln_bin, default_model):
    base = ("run", "-m", default_model, "-p", "Once upon a time", "-n", "16", "--temp", "1.0", "-t", "2")
    a = kiln(kiln_bin, *base, "--seed", "7").stdout
    b = kiln(kiln_bin, *base, "--seed", "7").stdout
    c = kiln(kiln_bin, *base, "--seed", "8").stdout
    assert a == b
    assert a != c


def test_run_chat_stops_at_end_of_turn(kiln_bin, default_model):
    r = kiln(kiln_bin, "run", "-m", default_model, "-p", "Say hello.", "--chat", "-n", "200",
             "--temp", "0", "-t", "2")
    assert "<|im_end|>" not in r.stdout and r.stdout.strip()
    generated = int(r.stderr.split("generation: ")[1].split()[0])
    assert generated < 200  # stopped at <|im_end|>, not at -n


def test_run_rejects_prompt_that_does_not_fit(kiln_bin, default_model):
    r = kiln(kiln_bin, "run", "-m", default_model, "-p", "hello there", "-n", "100", "-c", "50",
             check=False)
    assert r.returncode == 1
    assert "do not fit the context size 50" in r.stderr


def test_run_rejects_bad_options(kiln_bin, default_model):
    r = kiln(kiln_bin, "run", "-m", default_model, "-p", "x", "--temp", "hot", check=False)
    assert r.returncode == 1 and "--temp expects a number" in r.stderr
    r = kiln(kiln_bin, "run", "-p", "x", check=False)
    assert r.returncode == 1 and "-m MODEL.gguf is required" in r.stderr
    r = kiln(kiln_bin, "run", "-m", "/nonexistent.gguf", "-p", "x", check=False)
    assert r.returncode == 1 and "/nonexistent.gguf" in r.stderr


def test_logits_prompt_and_tokens_agree(kiln_bin, default_model, tmp_path):
    kiln(kiln_bin, "logits", "-m", default_model, "--prompt", "Hello world, this is kiln.",
         "--out", tmp_path / "a.npy", "--save-tokens", tmp_path / "t.txt", "-t", "2")
    toks = (tmp_path / "t.txt").read_text().split()
    kiln(kiln_bin, "logits", "-m", default_model, "--tokens", " ".join(toks), "--out",
         tmp_path / "b.npy", "-b", "3", "-t", "1")
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (len(toks), 49152) and a.dtype == np.float32
    # Different batch splits and thread counts: the same math up to float rounding, which the
    # 8-bit activation quantization of the matmuls amplifies (exact equivalence of batch
    # splits is tested in tests/engine on float weights).
    assert np.array_equal(a[0], np.load(tmp_path / "a.npy")[0])
    assert np.abs(a - b).max() < 2.0
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.8


def test_logits_precise_mode(kiln_bin, default_model, tmp_path):
    prompt = "Hello world, this is kiln. The quick brown fox jumps over the lazy dog."
    kiln(kiln_bin, "logits", "-m", default_model, "--prompt", prompt, "--out", tmp_path / "p.npy",
         "--save-tokens", tmp_path / "t.txt", "-t", "2", "--precise")
    toks = (tmp_path / "t.txt").read_text().split()
    kiln(kiln_bin, "logits", "-m", default_model, "--tokens", " ".join(toks), "--out",
         tmp_path / "q.npy", "-b", "3", "-t", "1", "--act-precision", "int16")
    kiln(kiln_bin, "logits", "-m", default_model, "--prompt", prompt, "--out", tmp_path / "i.npy",
         "-t", "2", "--act-precision", "int8")
    p, q, i = (np.load(tmp_path / f) for f in ("p.npy", "q.npy", "i.npy"))
    # int16 activations leave next to no rounding for batch splits and thread counts to
    # amplify (compare the 2.0 allowed for int8 in test_logits_prompt_and_tokens_agree).
    assert np.abs(p - q).max() < 0.02
    # And it is a different mode: the int8 activation rounding moves the logits visibly.
    assert np.abs(p - i).max() > 0.02
    r = kiln(kiln_bin, "logits", "-m", default_model, "--prompt", "x", "--out", tmp_path / "x.npy",
             "--act-precision", "int4", check=False)
    assert r.returncode == 1 and "--act-precision: expected int8 or int16" in r.stderr


def test_logits_rejects_out_of_range_token(kiln_bin, default_model, tmp_path):
    r = kiln(kiln_bin, "logits", "-m", default_model, "--tokens", "1 99999", "--out",
             tmp_path / "x.npy", check=False)
    assert r.returncode == 1 and "token id 99999 is out of range" in r.stderr


def test_bench_json(kiln_bin, default_model):
    r = kiln(kiln_bin, "bench", "-m", default_model, "-p", "16", "-n", "4", "-r", "2", "-t", "2",
             "--json")
    j = json.loads(r.stdout)
    for key in ("model", "threads", "n_prompt", "n_gen", "pp_tps", "pp_tps_sd", "tg_tps",
                "tg_tps_sd", "peak_rss_bytes", "bandwidth_fraction"):
        assert key in j, key
    assert j["n_prompt"] == 16 and j["n_gen"] == 4 and j["threads"] == 2
    assert j["pp_tps"] > 0 and j["tg_tps"] > 0 and 0 < j["bandwidth_fraction"] < 2
    assert j["peak_rss_bytes"] > 50 << 20  # the weights are mapped and touched
    assert j["decode_batch"] == 1


def test_bench_decode_batch_counts_every_sequence(kiln_bin, default_model):
    r = kiln(kiln_bin, "bench", "-m", default_model, "-p", "0", "-n", "3", "-r", "1", "-t", "2",
             "--decode-batch", "4", "--json")
    j = json.loads(r.stdout)
    assert j["decode_batch"] == 4 and j["n_gen"] == 3 and j["tg_tps"] > 0
    assert j["peak_rss_bytes"] > 50 << 20
    r = kiln(kiln_bin, "bench", "-m", default_model, "-n", "2", "--batch-gemm", "sometimes",
             check=False)
    assert r.returncode != 0 and "--batch-gemm: expected auto, all or off" in r.stderr


def test_bench_depth_starts_pp_and_tg_after_that_many_tokens(kiln_bin, default_model):
    base = ("bench", "-m", default_model, "-p", "8", "-n", "3", "-r", "1", "-t", "2")
    j = json.loads(kiln(kiln_bin, *base, "-d", "40", "--json").stdout)
    assert j["n_depth"] == 40 and j["pp_tps"] > 0 and j["tg_tps"] > 0
    assert json.loads(kiln(kiln_bin, *base, "--json").stdout)["n_depth"] == 0
    # llama-bench's names for tests at a depth.
    table = kiln(kiln_bin, *base, "--depth", "40").stdout
    assert "pp8 @ d40" in table and "tg3 @ d40" in table
    # Every sequence of a decode batch starts at the depth.
    j = json.loads(kiln(kiln_bin, "bench", "-m", default_model, "-p", "0", "-n", "2", "-r", "1",
                        "-t", "2", "-d", "20", "--decode-batch", "3", "--json").stdout)
    assert j["n_depth"] == 20 and j["decode_batch"] == 3 and j["tg_tps"] > 0
    r = kiln(kiln_bin, *base, "-d", "-3", check=False)
    assert r.returncode != 0 and "-d" in r.stderr


def cpu_has_avx512_vnni():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return all(f in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"))


def test_bench_reports_how_the_weights_are_held(kiln_bin, default_model):
    base = ("bench", "-m", default_model, "-p", "0", "-n", "2", "-r", "1", "-t", "2")
    # Without the panel cache: the file mapping, on 2 MiB pages as far as the kernel grants them.
    mapped = kiln(kiln_bin, *base, "--no-panel-cache").stdout
    assert "weights: mapped, " in mapped and " MiB on 2 MiB pages" in mapped
    small = kiln(kiln_bin, *base, "--no-panel-cache", "--no-hugepage-mmap").stdout
    assert "weights: mapped\n" in small and "tg2" in small
    resident = kiln(kiln_bin, *base, "--hugepage-weights").stdout
    assert "weights: a resident copy on 2 MiB pages" in resident


def test_logits_are_the_same_however_the_weights_are_held(kiln_bin, default_model, tmp_path):
    # The default model is Q4_1 and Q8_0: their panels give the blocks' results bit for bit.
    outs = []
    for i, flags in enumerate(([], ["--no-panel-cache"], ["--no-hugepage-mmap", "--no-panel-cache"],
                               ["--hugepage-weights"])):
        out = tmp_path / f"l{i}.npy"
        kiln(kiln_bin, "logits", "-m", default_model, "--prompt", "Huge pages or small ones",
             "--out", out, "-t", "2", *flags)
        outs.append(np.load(out))
    for other in outs[1:]:
        assert np.array_equal(outs[0], other)


@pytest.mark.skipif(not cpu_has_avx512_vnni(), reason="pre-packed panels need AVX-512 VNNI")
def test_panel_cache_is_packed_once_then_mapped(kiln_bin, default_model_q4_k_m, tmp_path):
    cache = tmp_path / "panels"
    base = ("bench", "-m", default_model_q4_k_m, "-p", "0", "-n", "2", "-r", "1", "-t", "2",
            "--panel-cache", cache)
    first = kiln(kiln_bin, *base).stdout
    assert f"pre-packed panels packed into {cache}/SmolLM2-135M-Instruct-Q4_K_M-" in first, first
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".panels", files
    second = kiln(kiln_bin, *base).stdout
    assert f"pre-packed panels from {files[0]}" in second, second
    assert list(cache.iterdir()) == files
    # Greedy text through the cache is the text from the model's own blocks.
    run = ("run", "-m", default_model_q4_k_m, "-p", "The capital of France is", "-n", "24",
           "--temp", "0", "-t", "2")
    cached = kiln(kiln_bin, *run, "--panel-cache", cache)
    assert f"weights: mapped; pre-packed panels from {files[0]}" in cached.stderr
    blocks = kiln(kiln_bin, *run, "--no-panel-cache")
    assert cached.stdout == blocks.stdout and len(cached.stdout) > 20


def test_an_unwritable_panel_cache_runs_without_it_and_says_why(kiln_bin, default_model_q4_k_m,
                                                               tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    r = kiln(kiln_bin, "run", "-m", default_model_q4_k_m, "-p", "Hello", "-n", "4", "--temp", "0",
             "-t", "2", "--panel-cache", not_a_folder / "cache")
    assert "no panel cache: cannot write the panel cache" in r.stderr, r.stderr
    assert "--no-panel-cache" in r.stderr
    r = kiln(kiln_bin, "run", "-m", default_model_q4_k_m, "-p", "Hello", "-n", "1",
             "--panel-cache", "", check=False)
    assert r.returncode != 0 and "--panel-cache: expected a folder" in r.stderr


@pytest.mark.skipif(not cpu_has_avx512_vnni(), reason="pre-packed panels need AVX-512 VNNI")
def test_packed_k_panels_decode_as_the_gemm(kiln_bin, default_model_q4_k_m, tmp_path):
    # Pre-packed panels (the panel cache, by default, or --hugepage-weights) hold Q4_K and Q6_K
    # too and are read for every token, so one token at a time (-b 1) gives the logits the GEMM
    # gives the whole prompt in one run (from the model's own blocks a lone token takes the
    # per-row kernels instead).
    outs = {}
    for name, flags in {"blocks_run": ["-b", "512", "--no-panel-cache"],
                        "packed_tokens": ["-b", "1", "--hugepage-weights"],
                        "cached_tokens": ["-b", "1"],
                        "blocks_tokens": ["-b", "1", "--no-panel-cache"]}.items():
        out = tmp_path / f"{name}.npy"
        kiln(kiln_bin, "logits", "-m", default_model_q4_k_m, "--prompt",
             "One token at a time, or all at once", "--out", out, "-t", "2", *flags)
        outs[name] = np.load(out)
    assert np.array_equal(outs["packed_tokens"], outs["blocks_run"])
    assert np.array_equal(outs["cached_tokens"], outs["blocks_run"])
    # The per-row kernels round otherwise, so the comparisons above are not vacuous.
    assert not np.array_equal(outs["blocks_tokens"], outs["blocks_run"])


def test_unsupported_architecture_is_named(kiln_bin, repo_root, tmp_path):
    # A vocabulary-only GGUF has no llama.* keys and another architecture.
    vocab = repo_root / "tests/data/vocab/ggml-vocab-gpt-2.gguf"
    r = kiln(kiln_bin, "logits", "-m", vocab, "--tokens", "1", "--out", tmp_path / "x.npy",
             check=False)
    assert r.returncode == 1
    assert "is not supported; kiln runs: llama" in r.stderr
