"""kiln serve --device: cuda runs the whole forward on the GPU. Without a usable GPU (or in
a build without CUDA) the server refuses to start with one clear error and exit status 1,
never a crash or a server that answers 503 forever; with one it serves like the CPU."""
import re
import subprocess
import time

import openai
import pytest
from kiln_server import KilnServer


def test_unknown_device_is_an_error(kiln_bin, default_model):
    r = subprocess.run([str(kiln_bin), "serve", "-m", str(default_model), "--port", "0",
                        "--device", "tpu"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "unknown device 'tpu' (use cpu or cuda)" in r.stderr


def test_cuda_serves_or_fails_cleanly(kiln_bin, default_model, tmp_path):
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(kiln_bin), "serve", "-m", str(default_model), "--port", "0",
                                 "--device", "cuda", "-c", "512"], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                if "kiln serve: ready" in log_path.read_text():
                    break
                time.sleep(0.05)
            text = log_path.read_text()
            if proc.poll() is None and "kiln serve: ready" in text:
                gpu = True
            else:
                assert proc.wait(timeout=30) == 1, text
                gpu = False
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if not gpu:
        errors = [line for line in text.splitlines() if "error" in line]
        assert len(errors) == 1, text
        assert re.search(r"kiln serve: error: (no CUDA device|this kiln was built without CUDA)",
                         errors[0]), text
        return
    # A GPU: chat through the official client works, and at temperature 0 the streamed
    # answer is the non-streamed one (the GPU's arithmetic differs from the CPU's, so the
    # text is not compared with the CPU server's).
    s = KilnServer(kiln_bin, default_model, tmp_path, "--device", "cuda", "--alias", "smol")
    try:
        client = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model="smol", max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Hi"}])
        assert r.usage.completion_tokens > 0 and r.choices[0].finish_reason in ("stop", "length")
        chunks = list(client.chat.completions.create(
            model="smol", max_tokens=8, temperature=0, stream=True,
            messages=[{"role": "user", "content": "Hi"}]))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == r.choices[0].message.content
    finally:
        s.stop()
