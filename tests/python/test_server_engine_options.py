"""kiln serve takes the same engine options as run/bench (cli/model_options): the weights in
a huge-page copy give the same answers as the memory-mapped file, and every --batch-gemm
mode serves (their outputs are checked for batch invariance in the engine's gtests)."""
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
