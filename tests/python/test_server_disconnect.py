"""A client that leaves is noticed before its answer is written: during the prefill of a
long prompt (streamed or not) and while a non-streamed answer is still generating. The
server's slot is freed (kiln_active_sequences back to 0, kiln_requests_cancelled_total up)
and the work stops there: fewer prompt tokens are processed than the prompt has, and no
(or few) tokens are generated.

The server takes at most 16 prompt tokens per engine step (--prefill-chunk 16), so a
1500-token prompt needs about 90 steps: far more time than noticing the disconnect takes.
"""
import json
import socket
import time

import pytest
from kiln_server import KilnServer

PROMPT_TOKENS = 1500
END_TOKENS_OFF = {"0": -100, "1": -100, "2": -100}  # SmolLM2's end-of-text/turn tokens


@pytest.fixture(scope="module")
def server(kiln_bin, default_model, tmp_path_factory):
    s = KilnServer(kiln_bin, default_model, tmp_path_factory.mktemp("serve"), "-c", "2048",
                   "--prefill-chunk", "16", "--alias", "smol", parallel=1)
    yield s
    s.stop()


def post(server, path, body):
    """Sends a request on a raw socket and returns the socket without reading anything."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def wait_for(server, condition, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = server.metrics()
        if condition(m):
            return m
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}: {server.metrics()}")


def wait_until_freed(server, before):
    return wait_for(server, lambda m: m["kiln_active_sequences"] == 0 and
                    m["kiln_requests_cancelled_total"] > before["kiln_requests_cancelled_total"],
                    "the slot to be freed")


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_during_prefill(server, stream):
    before = server.metrics()
    # Plain tokens, no specials; a different prompt per case, so no prefix is cached.
    prompt = [(17 * i + 1000 * stream) % 5000 + 100 for i in range(PROMPT_TOKENS)]
    sock = post(server, "/v1/completions", {"model": "smol", "prompt": prompt, "max_tokens": 4,
                                            "temperature": 0, "stream": stream})
    # The prefill has begun: some of the prompt is in the KV cache.
    wait_for(server, lambda m: m["kiln_prompt_tokens_total"] > before["kiln_prompt_tokens_total"],
             "the prefill to start")
    sock.close()
    after = wait_until_freed(server, before)
    assert after["kiln_prompt_tokens_total"] - before["kiln_prompt_tokens_total"] < PROMPT_TOKENS
    assert after["kiln_generation_tokens_total"] == before["kiln_generation_tokens_total"]
    # The slot serves the next request.
    status, body = server.json("POST", "/v1/completions",
                               {"model": "smol", "prompt": "Hello", "max_tokens": 3})
    assert status == 200 and body["usage"]["completion_tokens"] == 3


def test_disconnect_while_a_non_streamed_answer_generates(server):
    before = server.metrics()
    sock = post(server, "/v1/chat/completions", {
        "model": "smol", "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 1500, "temperature": 1.0, "logit_bias": END_TOKENS_OFF})
    wait_for(server, lambda m: m["kiln_generation_tokens_total"] >
             before["kiln_generation_tokens_total"], "generation to start")
    sock.close()
    after = wait_until_freed(server, before)
    # Far fewer than the 1500 tokens asked for were generated.
    assert after["kiln_generation_tokens_total"] - before["kiln_generation_tokens_total"] < 500


def test_a_waiting_client_still_gets_its_answer(server):
    """The disconnect check must not cancel a client that is merely waiting."""
    sock = post(server, "/v1/completions", {"model": "smol", "prompt": [6000 + i for i in range(400)],
                                            "max_tokens": 5, "temperature": 0,
                                            "logit_bias": END_TOKENS_OFF})
    with sock, sock.makefile("rb") as f:
        assert b" 200 " in f.readline()
        length = 0
        while (line := f.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = json.loads(f.read(length))
    assert body["usage"] == {"prompt_tokens": 400, "completion_tokens": 5, "total_tokens": 405}
