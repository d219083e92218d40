"""kiln serve on the default model, driven by the official openai client and raw HTTP.

One server (4 slots, 1024-token context) is shared by the module; a second
one with --api-key checks authentication. Generations are short (max_tokens
<= 24) to keep the run well under two minutes on 2 cores.
"""
import concurrent.futures
import http.client
import json
import re
import time

import openai
import pytest
from kiln_server import KilnServer

MAX_TOKENS = 12


Server = KilnServer


@pytest.fixture(scope="module")
def server(kiln_bin, default_model, tmp_path_factory):
    s = Server(kiln_bin, default_model, tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def model_id(server):
    _, body = server.json("GET", "/v1/models")
    return body["data"][0]["id"]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, model_id, messages, **kw):
    kw.setdefault("max_tokens", MAX_TOKENS)
    return client.chat.completions.create(model=model_id, messages=messages, **kw)


def stream_text(client, model_id, messages, **kw):
    kw.setdefault("max_tokens", MAX_TOKENS)
    chunks = list(client.chat.completions.create(model=model_id, messages=messages, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


USER = [{"role": "user", "content": "What is the capital of France?"}]


# --- models, health, metrics ------------------------------------------------------------------

def test_health_and_models(server, client, model_id):
    status, body = server.json("GET", "/health")
    assert status == 200 and body["status"] == "ok"
    models = client.models.list()
    assert [m.id for m in models.data] == [model_id]
    assert client.models.retrieve(model_id).id == model_id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_in_memory_prefix(client, model_id):
    r = chat(client, "in-memory::" + model_id, USER, temperature=0, max_tokens=2)
    assert r.model == model_id


def test_metrics_names(server):
    _, payload = server.request("GET", "/metrics")
    text = payload.decode()
    for name in ["kiln_requests_total", "kiln_prompt_tokens_total", "kiln_generation_tokens_total",
                 "kiln_time_to_first_token_seconds_bucket", "kiln_time_per_output_token_seconds_count",
                 "kiln_queue_depth", "kiln_active_sequences", "kiln_kv_cache_used_tokens",
                 "kiln_kv_cache_usage_ratio"]:
        assert name in text, name
    for line in text.splitlines():
        assert line.startswith("#") or re.match(r'^[a-z_]+(\{[a-z]+="[^"]*"\})? [0-9.e+-]+$', line), line


# --- the Chat Completions guide's examples ----------------------------------------------------

def test_basic(client, model_id):
    r = chat(client, model_id, USER)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == model_id
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0 and c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= MAX_TOKENS
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_system_prompt_and_multi_turn(client, model_id):
    one = chat(client, model_id, [{"role": "system", "content": "You are a terse assistant."}] + USER)
    assert one.choices[0].message.content
    turns = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Who won the world series in 2020?"},
        {"role": "assistant", "content": "The Los Angeles Dodgers won the World Series in 2020."},
        {"role": "user", "content": "Where was it played?"},
    ]
    multi = chat(client, model_id, turns)
    assert multi.choices[0].message.content
    assert multi.usage.prompt_tokens > one.usage.prompt_tokens + 20


def test_content_parts(client, model_id):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                          {"type": "text", "text": " of France?"}]}]
    a = chat(client, model_id, parts, temperature=0, max_tokens=4)
    b = chat(client, model_id, USER, temperature=0, max_tokens=4)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_streaming(client, model_id):
    chunks, text = stream_text(client, model_id, USER, temperature=0,
                               stream_options={"include_usage": True})
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    whole = chat(client, model_id, USER, temperature=0)
    assert text == whole.choices[0].message.content


def test_temperature_and_seed(client, model_id):
    kw = dict(temperature=1.2, top_p=0.95, seed=1234, max_tokens=16)
    a = chat(client, model_id, USER, **kw).choices[0].message.content
    b = chat(client, model_id, USER, **kw).choices[0].message.content
    assert a == b
    others = {chat(client, model_id, USER, **{**kw, "seed": s}).choices[0].message.content
              for s in (1, 2, 3)}
    assert len(others | {a}) > 1  # different seeds do not all agree
    g1 = chat(client, model_id, USER, temperature=0).choices[0].message.content
    g2 = chat(client, model_id, USER, temperature=0, seed=99).choices[0].message.content
    assert g1 == g2


def test_max_tokens_is_length(client, model_id):
    r = chat(client, model_id, USER, temperature=0, max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    r = client.chat.completions.create(model=model_id, messages=USER, temperature=0,
                                       max_completion_tokens=2)
    assert r.usage.completion_tokens == 2


def test_stop_strings(client, model_id):
    full = chat(client, model_id, USER, temperature=0, max_tokens=24).choices[0].message.content
    assert len(full) > 10
    stop = full[len(full) // 2:len(full) // 2 + 3]
    want = full[:full.index(stop)]
    r = chat(client, model_id, USER, temperature=0, max_tokens=24, stop=[stop, "@@never@@"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == want
    chunks, text = stream_text(client, model_id, USER, temperature=0, max_tokens=24, stop=stop)
    assert text == want  # no part of the stop string leaked into the stream
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_logprobs(client, model_id):
    r = chat(client, model_id, USER, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        # greedy: the chosen token is the most likely one
        assert t.token == t.top_logprobs[0].token
        assert abs(t.logprob - t.top_logprobs[0].logprob) < 1e-5
        assert bytes(t.bytes).decode("utf-8", "replace") is not None
    assert "".join(bytes(t.bytes).decode("utf-8", "replace") for t in content) == \
        r.choices[0].message.content


def test_special_tokens_in_content_are_text(client, model_id):
    plain = chat(client, model_id, [{"role": "user", "content": "x"}], max_tokens=1)
    injected = chat(client, model_id, [{"role": "user", "content": "<|im_end|>"}], max_tokens=1)
    # As a control token it would be one token; as text it is several.
    assert injected.usage.prompt_tokens - plain.usage.prompt_tokens >= 3


# --- legacy completions ------------------------------------------------------------------------

def test_completions(client, model_id):
    r = client.completions.create(model=model_id, prompt="The capital of France is",
                                  max_tokens=6, temperature=0, logprobs=2)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].finish_reason in ("stop", "length")
    assert len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens
    # text_offset: characters from the start of the prompt (OpenAI's legacy field).
    offsets = r.choices[0].logprobs.text_offset
    assert offsets[0] == len("The capital of France is") and offsets == sorted(offsets)
    assert len(r.choices[0].logprobs.top_logprobs[0]) == 2
    chunks = list(client.completions.create(model=model_id, prompt="The capital of France is",
                                            max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


# --- errors ------------------------------------------------------------------------------------

def error_of(server, body, path="/v1/chat/completions", **kw):
    status, payload = server.request("POST", path, body, **kw)
    err = json.loads(payload)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return status, err


def test_bad_requests(server, model_id):
    msgs = USER
    status, err = error_of(server, None, raw=b"{not json")
    assert status == 400 and err["type"] == "invalid_request_error"
    status, err = error_of(server, {"messages": msgs})
    assert status == 400 and err["param"] == "model"
    status, err = error_of(server, {"model": model_id})
    assert status == 400 and err["param"] == "messages"
    status, err = error_of(server, {"model": model_id, "messages": msgs, "temperature": "hot"})
    assert status == 400 and err["param"] == "temperature"
    status, err = error_of(server, {"model": model_id, "messages": msgs, "max_tokens": "10"})
    assert status == 400 and err["param"] == "max_tokens"
    status, err = error_of(server, {"model": model_id, "messages": msgs, "n": 2})
    assert status == 400 and err["param"] == "n"
    status, err = error_of(server, {"model": model_id, "messages": [{"role": "user"}]})
    assert status == 400 and err["param"] == "messages[0].content"
    status, err = error_of(server, {"model": "gpt-4", "messages": msgs})
    assert status == 400 and err["param"] == "model" and err["message"] == "Model 'gpt-4' not found"
    status, err = error_of(server, {"model": model_id, "messages": msgs,
                                    "response_format": {"type": "json_schema"}})
    assert status == 400 and err["param"] == "response_format.json_schema"
    status, err = error_of(server, {"model": model_id, "messages": msgs,
                                    "logit_bias": {"999999": 5}})
    assert status == 400 and err["param"] == "logit_bias"
    status, err = error_of(server, {"model": model_id, "prompt": 5}, path="/v1/completions")
    assert status == 400 and err["param"] == "prompt"


def test_hostile_bodies_get_400_and_the_server_lives_on(server, model_id, client):
    # 200 KB nested 100,000 deep: parsed fine, but its first copy overflowed a server
    # thread's stack (a segfault that took the whole server down).
    deep = "[" * 100000 + "]" * 100000
    for raw in ('{"model": "%s", "messages": [{"role": "user", "content": "hi", "name": %s}]}'
                % (model_id, deep),
                '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], '
                '"response_format": {"type": "json_schema", "json_schema": {"name": "x", '
                '"schema": {"const": %s}}}}' % (model_id, deep)):
        status, err = error_of(server, None, raw=raw.encode())
        assert status == 400 and "deeper than 512 levels" in err["message"], err
    # Schemas no document satisfies: refused up front, not a 500 mid-generation.
    for schema in ({"enum": []}, False, {"type": "string", "minLength": 3, "maxLength": 1},
                   {"type": "integer", "minimum": 5, "maximum": 2}):
        for stream in (False, True):
            status, err = error_of(server, {
                "model": model_id, "messages": USER, "stream": stream,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "x", "schema": schema}}})
            assert status == 400 and err["code"] == "unsatisfiable_schema", (schema, err)
            assert err["param"] == "response_format.json_schema.schema"
    assert chat(client, model_id, USER, max_tokens=2).choices[0].message.content


def test_logprobs_stop_at_the_stop_string(client, model_id):
    full = chat(client, model_id, USER, temperature=0, max_tokens=24).choices[0].message.content
    for at in range(2, len(full) - 3, 3):
        stop = full[at:at + 3]
        want = full[:full.index(stop)]
        r = chat(client, model_id, USER, temperature=0, max_tokens=24, stop=stop, logprobs=True)
        assert r.choices[0].message.content == want
        tokens = [bytes(t.bytes) for t in r.choices[0].logprobs.content]
        spelled = b"".join(tokens)
        assert spelled.startswith(want.encode()), (stop, spelled, want)
        if tokens:  # only the last token may run into the stop string
            assert len(spelled) - len(tokens[-1]) < max(len(want.encode()), 1), (stop, spelled)


def test_prompt_longer_than_context(server, model_id):
    long = [{"role": "user", "content": "hello " * 1500}]
    for stream in (False, True):  # known before the stream starts: a real status
        status, err = error_of(server, {"model": model_id, "messages": long, "stream": stream})
        assert status == 400 and err["type"] == "invalid_request_error"
        assert "context length" in err["message"]


def test_openai_client_errors(client, model_id):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "nope", USER)
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        chat(client, model_id, USER, n=3)


def test_unknown_route_and_big_body(server):
    status, payload = server.request("GET", "/v1/nothing")
    assert status == 404 and json.loads(payload)["error"]["type"] == "invalid_request_error"
    big = b'{"model": "x", "pad": "' + b"a" * (9 << 20) + b'"}'
    try:
        status, payload = server.request("POST", "/v1/chat/completions", raw=big)
    except (ConnectionResetError, BrokenPipeError):
        pytest.fail("the server dropped the connection instead of answering 413")
    assert status == 413 and "error" in json.loads(payload)


# --- concurrency -------------------------------------------------------------------------------

PROMPTS = ["Name a color.", "Count to five.", "What is 2+2?", "Say hi in French.",
           "Name a planet.", "What is the opposite of up?", "Name a fruit.", "Spell cat."]


def test_eight_concurrent_streams_match_running_alone(server, client, model_id):
    msgs = [[{"role": "user", "content": p}] for p in PROMPTS]
    alone = [chat(client, model_id, m, temperature=0).choices[0].message.content for m in msgs]

    def one(m):
        chunks, text = stream_text(client, model_id, m, temperature=0)
        return text, [c.choices[0].finish_reason for c in chunks if c.choices][-1]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, msgs))
    for (text, finish), want in zip(results, alone):
        assert finish in ("stop", "length")
        assert text == want
    # The prompts share the chat template's system prompt, which came from the cache (on by
    # default), and still every stream matches its run alone (test_server_cache.py).
    assert server.metrics()["kiln_prompt_tokens_cached_total"] > 0


def test_disconnected_client_frees_its_slot(server, model_id):
    before = server.metrics()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = {"model": model_id, "messages": USER, "stream": True, "max_tokens": 900,
            "temperature": 1.0, "logit_bias": {"0": -100, "2": -100}}  # end tokens off
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.fp.readline()  # the first event has arrived: the sequence is running
    conn.sock.close()
    conn.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        m = server.metrics()
        if (m["kiln_active_sequences"] == 0 and m["kiln_requests_cancelled_total"] >
                before["kiln_requests_cancelled_total"]):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"slot not freed: {m}")
    # Far fewer than 900 tokens were generated for it.
    assert m["kiln_generation_tokens_total"] - before["kiln_generation_tokens_total"] < 200


# --- authentication ----------------------------------------------------------------------------

def test_api_key(kiln_bin, default_model, tmp_path):
    s = Server(kiln_bin, default_model, tmp_path, "--api-key", "sekret", "--alias", "smol")
    try:
        status, _ = s.request("GET", "/health")
        assert status == 200
        status, payload = s.request("GET", "/v1/models")
        assert status == 401 and "error" in json.loads(payload)
        bad = openai.OpenAI(base_url=s.base + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=s.base + "/v1", api_key="sekret", max_retries=0)
        assert [m.id for m in good.models.list().data] == ["smol"]
        r = good.chat.completions.create(model="smol", messages=USER, max_tokens=2)
        assert r.model == "smol"
    finally:
        s.stop()
