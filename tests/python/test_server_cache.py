"""kiln serve --cache-prompt: a new request reuses the KV cache of a free slot whose last
request shares a prefix with its prompt, and only the rest of the prompt is computed.
Without the flag nothing is reused (test_server.py checks the counter stays 0)."""
import openai
import pytest
from kiln_server import KilnServer


@pytest.fixture(scope="module")
def server(kiln_bin, default_model, tmp_path_factory):
    s = KilnServer(kiln_bin, default_model, tmp_path_factory.mktemp("serve"), "--cache-prompt",
                   "--alias", "smol", parallel=2)
    yield s
    s.stop()


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
