"""kiln serve takes the same engine options as run/bench (cli/model_options): the weights in
a huge-page copy give the same answers as the memory-mapped file, and every --batch-gemm
mode serves (their outputs are checked for batch invariance in the engine's gtests)."""
import concurrent.futures
import signal
import subprocess
import time

import openai
import pytest
from kiln_server import KilnServer

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def greedy(server, max_tokens=24):
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused")
    model = client.models.list().data[0].id
    r = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0,
                                       max_tokens=max_tokens)
    return r.choices[0].message.content, r.usage.completion_tokens


def test_hugepage_weights_answer_as_the_mapped_file(kiln_bin, default_model, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mapped = KilnServer(kiln_bin, default_model, tmp_path / "a")
    try:
        want = greedy(mapped)
    finally:
        mapped.stop()
    copy = KilnServer(kiln_bin, default_model, tmp_path / "b", "--hugepage-weights")
    try:
        assert greedy(copy) == want
    finally:
        copy.stop()


@pytest.mark.parametrize("mode", ["off", "all"])
def test_every_batch_gemm_mode_serves(kiln_bin, default_model, tmp_path, mode):
    server = KilnServer(kiln_bin, default_model, tmp_path, "--batch-gemm", mode)
    try:
        text, n = greedy(server, max_tokens=8)
        assert text and n == 8
    finally:
        server.stop()


def test_a_second_server_on_the_same_port_is_refused(kiln_bin, default_model, tmp_path):
    server = KilnServer(kiln_bin, default_model, tmp_path)
    try:
        r = subprocess.run([str(kiln_bin), "serve", "-m", str(default_model), "--port",
                            str(server.port), "-t", "1"], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert f"cannot listen on 127.0.0.1:{server.port}" in r.stderr
        status, _ = server.request("GET", "/health")  # the first one still serves
        assert status == 200
    finally:
        server.stop()


def test_a_burst_of_connections_is_accepted_at_once(kiln_bin, default_model, tmp_path):
    """More clients than the HTTP library's default listen backlog (5) connect while the
    server cannot accept (stopped for a moment); once it runs again every one is answered
    at once, none waiting out a dropped SYN's 1 s retry."""
    server = KilnServer(kiln_bin, default_model, tmp_path)

    def health():
        t0 = time.perf_counter()
        status, _ = server.request("GET", "/health")
        return status, time.perf_counter() - t0

    try:
        server.proc.send_signal(signal.SIGSTOP)
        try:
            with concurrent.futures.ThreadPoolExecutor(24) as pool:
                futures = [pool.submit(health) for _ in range(24)]
                time.sleep(0.3)
                server.proc.send_signal(signal.SIGCONT)
                results = [f.result() for f in futures]
        finally:
            server.proc.send_signal(signal.SIGCONT)
        assert all(status == 200 for status, _ in results)
        assert max(t for _, t in results) < 0.9, sorted(t for _, t in results)[-3:]
    finally:
        server.stop()


def mapped_rss_kib(pid, path):
    """Resident KiB of the process's mappings of `path` (from /proc/PID/smaps)."""
    total, current = 0, None
    for line in open(f"/proc/{pid}/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            current = fields[5] if len(fields) >= 6 else None
        elif fields[0] == "Rss:" and current == str(path):
            total += int(fields[1])
    return total


def test_the_panel_cache_serves_without_the_models_blocks_in_memory(kiln_bin, default_model_q4_k_m,
                                                                   tmp_path):
    # The server faults in what the forward reads: the panels, and of the model file only the
    # embedding rows (and nothing of the matrices, which would count in its RSS twice).
    cache = tmp_path / "panels"
    server = KilnServer(kiln_bin, default_model_q4_k_m, tmp_path, "--panel-cache", cache)
    try:
        log = server.log_path.read_text()
        assert "packing the weights into the panel cache" in log, log
        assert "pre-packed panels packed into" in log, log
        panels = next(cache.iterdir())
        text, n = greedy(server, max_tokens=8)
        assert text and n == 8
        model_kib = mapped_rss_kib(server.proc.pid, default_model_q4_k_m.resolve())
        panels_kib = mapped_rss_kib(server.proc.pid, panels.resolve())
        assert panels_kib > 0.9 * panels.stat().st_size / 1024, (panels_kib, panels.stat().st_size)
        # SmolLM2's tied embedding is 28 of the file's 98 MiB.
        assert model_kib < 0.5 * default_model_q4_k_m.stat().st_size / 1024, model_kib
    finally:
        server.stop()
    again = KilnServer(kiln_bin, default_model_q4_k_m, tmp_path, "--panel-cache", cache)
    try:
        assert f"pre-packed panels from {panels}" in again.log_path.read_text()
        assert greedy(again, max_tokens=8) == (text, n)
    finally:
        again.stop()
