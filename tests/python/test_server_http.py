"""The HTTP layer of `kiln serve` on the default model, with raw sockets and http.client:
half-open clients, 405 with Allow, CORS, the Bearer scheme, bodies without a usable
length, pipelining, and the request log (a rejected request's own duration, a cancelled
stream logged as 499).

Every test waits at most a few seconds: a server that does not answer at once fails it.
"""
import http.client
import json
import re
import socket
import time

import pytest
from kiln_server import serve

USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(kiln_bin, default_model, tmp_path_factory):
    yield from serve(kiln_bin, default_model, tmp_path_factory, parallel=2)


@pytest.fixture(scope="module")
def keyed(kiln_bin, default_model, tmp_path_factory):
    yield from serve(kiln_bin, default_model, tmp_path_factory, "--api-key", "sekret", parallel=1)


def connect(server, timeout=5):
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_response(f):
    """One response with a Content-Length from a socket's file: (status, headers, body)."""
    status_line = f.readline()
    assert status_line, "the server closed the connection without an answer"
    status = int(status_line.split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    body = f.read(int(headers.get("content-length", 0)))
    return status, headers, body


def raw(server, data, timeout=3):
    with connect(server, timeout) as sock, sock.makefile("rb") as f:
        sock.sendall(data)
        return read_response(f)


def log_lines(server, pattern):
    return [l for l in server.log_path.read_text().splitlines() if re.search(pattern, l)]


def wait_for_log(server, pattern, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if lines := log_lines(server, pattern):
            return lines
        time.sleep(0.05)
    pytest.fail(f"no log line matches {pattern!r}:\n{server.log_path.read_text()[-3000:]}")


def test_health_answers_under_100_half_open_connections(server):
    stuck = []
    try:
        for _ in range(100):
            s = connect(server)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the headers never end
            stuck.append(s)
        t0 = time.time()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        conn.close()
        assert time.time() - t0 < 2
        # Generation (a stream) works meanwhile.
        status, body = server.json("POST", "/v1/completions",
                                   {"model": "smol", "prompt": "Hi", "max_tokens": 2})
        assert status == 200 and body["usage"]["completion_tokens"] == 2
    finally:
        for s in stuck:
            s.close()


@pytest.mark.parametrize("method,path,allow", [
    ("GET", "/v1/chat/completions", "POST, OPTIONS"),
    ("PUT", "/v1/completions", "POST, OPTIONS"),
    ("POST", "/v1/models", "GET, HEAD, OPTIONS"),
    ("DELETE", "/v1/models/smol", "GET, HEAD, OPTIONS"),
])
def test_wrong_method_is_405(server, method, path, allow):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request(method, path, body=b"{}" if method in ("POST", "PUT") else None)
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 405
    assert resp.getheader("Allow") == allow
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] is None
    assert body["error"]["code"] == "method_not_allowed"
    assert method in body["error"]["message"] and path in body["error"]["message"]


def test_cors_preflight_without_the_key(keyed):
    status, headers, body = raw(keyed, (
        b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nOrigin: http://localhost:3000\r\n"
        b"Access-Control-Request-Method: POST\r\n"
        b"Access-Control-Request-Headers: authorization, content-type, x-stainless-lang\r\n\r\n"))
    assert status == 204 and body == b""
    assert headers["access-control-allow-origin"] == "*"
    assert "POST" in headers["access-control-allow-methods"]
    allowed = headers["access-control-allow-headers"].lower()
    for h in ("authorization", "content-type", "x-stainless-lang"):
        assert h in allowed


def test_cors_header_on_answers_and_streams(keyed):
    auth = {"Authorization": "Bearer sekret", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", keyed.port, timeout=30)
    conn.request("GET", "/v1/models", headers=auth)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200 and resp.getheader("Access-Control-Allow-Origin") == "*"
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": "smol", "messages": USER, "max_tokens": 2, "stream": True}), auth)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Access-Control-Allow-Origin") == "*"
    assert resp.read().rstrip().endswith(b"data: [DONE]")
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", keyed.port, timeout=30)
    conn.request("GET", "/v1/models")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 401 and resp.getheader("Access-Control-Allow-Origin") == "*"
    conn.close()


@pytest.mark.parametrize("auth,status", [
    ("Bearer sekret", 200), ("bearer sekret", 200), ("BEARER sekret", 200),
    ("Bearer Sekret", 401), ("Basic sekret", 401), ("Bearersekret", 401),
])
def test_bearer_scheme_is_case_insensitive(keyed, auth, status):
    got, _ = keyed.request("GET", "/v1/models", headers={"Authorization": auth})
    assert got == status


@pytest.mark.parametrize("headers,status,says", [
    (b"", 411, "Content-Length"),
    (b"Content-Length: 9437185\r\n", 413, "8 MiB"),  # 8 MiB + 1, and no body follows
    (b"Content-Length: abc\r\n", 400, "Content-Length 'abc'"),
])
def test_body_length_problems_are_answered_at_once(server, headers, status, says):
    t0 = time.time()
    got, _, body = raw(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + headers +
                       b"\r\n")
    assert got == status
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error" and says in err["message"], err
    assert time.time() - t0 < 2


def test_pipelined_requests_are_all_answered(server):
    body = json.dumps({"model": "smol", "prompt": "Hi", "max_tokens": 2}).encode()
    with connect(server, 30) as sock, sock.makefile("rb") as f:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body) +
                     b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, answer = read_response(f)
        assert status == 200 and json.loads(answer)["usage"]["completion_tokens"] == 2
        assert read_response(f)[0] == 200
        status, _, answer = read_response(f)
        assert status == 200 and json.loads(answer)["data"][0]["id"] == "smol"


def test_rejected_request_is_logged_with_its_own_duration(server):
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(f)[0] == 200
        time.sleep(0.5)  # the same connection and thread, a while later
        sock.sendall(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(f)[0] == 414
        assert f.read() == b""  # the server ends the connection after logging
    line = wait_for_log(server, r" 414 ")[-1]
    assert line.startswith("- - 414 "), line
    assert float(line.rsplit(" ", 1)[1].rstrip("s")) < 0.3, line


def test_cancelled_stream_is_logged_as_499(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": "smol", "messages": USER, "stream": True, "max_tokens": 900,
         "logit_bias": {"0": -100, "1": -100, "2": -100}}),
        {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.fp.readline()  # the stream has begun
    conn.sock.close()
    conn.close()
    line = wait_for_log(server, r"^POST /v1/chat/completions 499 ")[-1]
    assert int(re.search(r"completion=(\d+)", line).group(1)) < 900
    assert server.metrics()['kiln_requests_total{status="499"}'] >= 1
