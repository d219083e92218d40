"""Prompt caching (on by default; --no-cache-prompt turns it off): a new request reuses the KV
cache of a free slot whose last request shares a prefix with its prompt, or a copy of another
slot's (running or free) where that holds more, and only the rest of the prompt is computed,
with the same logits as a cold run, bit for bit."""
import openai
import pytest
from kiln_server import KilnServer, serve


@pytest.fixture(scope="module")
def server(kiln_bin, default_model, tmp_path_factory):
    yield from serve(kiln_bin, default_model, tmp_path_factory, parallel=2)


def cached(server):
    return server.metrics()["kiln_prompt_tokens_cached_total"]


def test_shared_prefixes_are_not_computed_again(server):
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)
    turn1 = [{"role": "user", "content": "Name three rivers in Europe."}]
    r1 = client.chat.completions.create(model="smol", messages=turn1, max_tokens=10,
                                        temperature=0)
    before, processed = cached(server), server.metrics()["kiln_prompt_tokens_total"]

    # The same prompt again: all of it but the last token comes from the cache.
    r2 = client.chat.completions.create(model="smol", messages=turn1, max_tokens=10,
                                        temperature=0)
    assert r2.usage.prompt_tokens == r1.usage.prompt_tokens
    assert cached(server) - before == r1.usage.prompt_tokens - 1
    assert server.metrics()["kiln_prompt_tokens_total"] - processed == 1

    # The next turn of the conversation starts with the whole first prompt.
    before = cached(server)
    turn2 = turn1 + [{"role": "assistant", "content": r2.choices[0].message.content},
                     {"role": "user", "content": "And one in Asia?"}]
    r3 = client.chat.completions.create(model="smol", messages=turn2, max_tokens=10,
                                        temperature=0)
    reused = cached(server) - before
    assert r1.usage.prompt_tokens <= reused < r3.usage.prompt_tokens
    assert r3.usage.completion_tokens > 0


def conversation_logprobs(server):
    """A multi-turn chat whose later turns start with the earlier ones, each answer's
    top-5 logprobs at every position (exact floats, as the server printed them)."""
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)
    messages, out = [], []
    for question in ["Name three rivers in Europe.", "And one in Asia?", "Which is longest?",
                     "Name three rivers in Europe."]:
        messages.append({"role": "user", "content": question})
        r = client.chat.completions.create(model="smol", messages=messages, max_tokens=12,
                                           temperature=0, logprobs=True, top_logprobs=5)
        out.append([(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs])
                    for t in r.choices[0].logprobs.content])
        messages.append({"role": "assistant", "content": r.choices[0].message.content})
    return out


@pytest.mark.parametrize("model,flags", [
    ("q4_1", []),  # every weight type's batch path is matmul's: any run gives the same rows
    ("q4_1", ["--batch-gemm", "off"]),  # runs of 8+ rows take the GEMM, shorter ones not
    ("q4_k_m", []),  # the K types keep their per-row kernels below 8 rows
])
def test_cached_prompts_give_a_cold_runs_logits(request, tmp_path, kiln_bin, model, flags):
    """Every turn reuses most of its prompt from the cache, and its logprobs equal those of a
    server that computes every prompt from scratch."""
    path = request.getfixturevalue("default_model" if model == "q4_1" else "default_model_q4_k_m")
    logprobs = {}
    for name, extra in (("warm", []), ("cold", ["--no-cache-prompt"])):
        (tmp_path / name).mkdir()
        s = KilnServer(kiln_bin, path, tmp_path / name, "--alias", "smol", *flags, *extra,
                       parallel=2)
        try:
            logprobs[name] = conversation_logprobs(s)
            reused = cached(s)
        finally:
            s.stop()
        assert (reused > 50) if name == "warm" else (reused == 0)
    assert logprobs["warm"] == logprobs["cold"]


SYSTEM = ("You are a careful assistant for a geography class. Answer in one short sentence, "
          "name real places only, and never invent facts.")


def second_users_logprobs(server):
    """A first user's request (streaming, held open) and a second user's with the same system
    prompt, asked while the first one runs: the second gets a free slot of its own, and its
    answer's top-5 logprobs at every position."""
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)
    first = client.chat.completions.create(
        model="smol", stream=True, max_tokens=60, temperature=0,
        messages=[{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": "Name three rivers in Europe."}])
    next(iter(first))  # admitted, its prompt computed
    before = cached(server)
    r = client.chat.completions.create(
        model="smol", max_tokens=12, temperature=0, logprobs=True, top_logprobs=5,
        messages=[{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": "Which mountain is the highest in Africa?"}])
    reused = cached(server) - before
    for _ in first:
        pass
    return reused, [(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs])
                    for t in r.choices[0].logprobs.content]


@pytest.mark.parametrize("model", ["q4_1", "q4_k_m"])
def test_a_running_slots_prefix_is_copied_exactly(request, tmp_path, kiln_bin, model):
    """The second user's shared system prompt comes from the first user's slot (copied KV
    rows, the first still generating), with the logprobs of a server that computes it."""
    path = request.getfixturevalue("default_model" if model == "q4_1" else "default_model_q4_k_m")
    results = {}
    for name, extra in (("warm", []), ("cold", ["--no-cache-prompt"])):
        (tmp_path / name).mkdir()
        s = KilnServer(kiln_bin, path, tmp_path / name, "--alias", "smol", *extra, parallel=2)
        try:
            results[name] = second_users_logprobs(s)
        finally:
            s.stop()
    assert results["cold"][0] == 0
    assert results["warm"][0] >= 20  # the system prompt and the turn's header, at least
    assert results["warm"][1] == results["cold"][1]
