"""enable_thinking and reasoning_content end to end, on a scripted token stream.

`kiln synth --chain` writes a tiny model whose every step predicts a fixed successor of
the current token (the blocks add nothing to the residual stream; embeddings and output
rows are chosen so the successor's logit is 64 and every other is 0). With the Qwen3 chat
template fixture, `<think>`/`</think>` added as user-defined tokens (as Qwen3 has them),
and two chains starting at the last token of each rendered prompt:

  enable_thinking true (or unset): the prompt ends "<|im_start|>assistant\\n"
      "\\n" -> <think> Let " me" " count" "." </think> Two " apples" "!" <|im_end|>
  enable_thinking false: the template writes an empty "<think>\\n\\n</think>\\n\\n" block
      "\\n\\n" -> Three " pears" "?" <|im_end|>

so the real server runs the whole request path (template with enable_thinking, prefill,
sampling, detokenization, the reasoning split, response JSON and SSE chunks) and the
expected output is known exactly. Driven by the official openai client (extra_body).
"""
import json
import subprocess

import openai
import pytest
from kiln_server import KilnServer

REASONING = ["Let", " me", " count", "."]
ANSWER = ["Two", " apples", "!"]
DIRECT_ANSWER = ["Three", " pears", "?"]
QUESTION = [{"role": "user", "content": "How many apples?"}]
MODEL = "scripted-qwen3"


def token_id(kiln_bin, vocab_model, piece):
    out = subprocess.run([str(kiln_bin), "tokenize", "-m", str(vocab_model), "--parse-special"],
                         input=piece.encode(), capture_output=True, check=True).stdout.split()
    assert len(out) == 1, f"{piece!r} is not one token: {out}"
    return int(out[0])


def rendered_prompt_tokens(kiln_bin, model, tmp_path, enable_thinking):
    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps(QUESTION))
    prompt = subprocess.run(
        [str(kiln_bin), "template", "-m", str(model), "--messages", str(messages),
         "--add-generation-prompt", "--var", f"enable_thinking={json.dumps(enable_thinking)}"],
        capture_output=True, check=True).stdout
    ids = subprocess.run([str(kiln_bin), "tokenize", "-m", str(model), "--parse-special"],
                         input=prompt, capture_output=True, check=True).stdout.split()
    return [int(i) for i in ids]


@pytest.fixture(scope="module")
def scripted_model(kiln_bin, default_model, repo_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scripted")
    info = json.loads(subprocess.run([str(kiln_bin), "info", "--json", str(default_model)],
                                     capture_output=True, check=True).stdout)
    n_vocab = info["vocab_size"]
    think, end_think = n_vocab, n_vocab + 1  # the two --add-token ids
    ids = {p: token_id(kiln_bin, default_model, p)
           for p in ["\n", "\n\n", "<|im_end|>", *REASONING, *ANSWER, *DIRECT_ANSWER]}
    # Every chained token needs a single successor: the pieces must all differ.
    assert len(set(ids.values())) == len(ids)
    thinking_chain = [ids["\n"], think, *(ids[p] for p in REASONING), end_think,
                      *(ids[p] for p in ANSWER), ids["<|im_end|>"]]
    direct_chain = [ids["\n\n"], *(ids[p] for p in DIRECT_ANSWER), ids["<|im_end|>"]]
    model = tmp / "scripted-qwen3.gguf"
    subprocess.run(
        [str(kiln_bin), "synth", "--out", str(model), "--vocab-from", str(default_model),
         "--preset", "tiny", "--type", "F16", "--add-token", "<think>", "--add-token",
         "</think>", "--chat-template", str(repo_root / "tests/data/templates/qwen3.jinja"),
         "--chain", " ".join(map(str, thinking_chain)),
         "--chain", " ".join(map(str, direct_chain))],
        check=True, capture_output=True)
    # The chains start where the rendered prompts end (and the added tokens are <think>s).
    assert rendered_prompt_tokens(kiln_bin, model, tmp, True)[-1] == ids["\n"]
    off = rendered_prompt_tokens(kiln_bin, model, tmp, False)
    assert off[-4:] == [think, ids["\n\n"], end_think, ids["\n\n"]]
    return model


@pytest.fixture(scope="module")
def client(kiln_bin, scripted_model, tmp_path_factory):
    server = KilnServer(kiln_bin, scripted_model, tmp_path_factory.mktemp("serve_scripted"),
                        "--alias", MODEL, parallel=2)
    try:
        yield openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0,
                            timeout=60)
    finally:
        server.stop()


def create(client, stream, enable_thinking, max_tokens=32):
    extra = {} if enable_thinking is None else {"extra_body": {"enable_thinking": enable_thinking}}
    return client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=max_tokens,
                                          temperature=0.7, seed=7, stream=stream, **extra)


@pytest.mark.parametrize("enable_thinking", [True, None])
def test_thinking_goes_to_reasoning_content(client, enable_thinking):
    r = create(client, False, enable_thinking)
    c = r.choices[0]
    assert c.finish_reason == "stop"
    assert c.message.reasoning_content == "".join(REASONING)
    assert c.message.content == "".join(ANSWER)
    assert r.usage.completion_tokens == len(REASONING) + len(ANSWER) + 3  # tags and <|im_end|>


def test_thinking_disabled_answers_directly(client):
    r = create(client, False, False)
    c = r.choices[0]
    assert c.finish_reason == "stop"
    assert c.message.content == "".join(DIRECT_ANSWER)
    assert getattr(c.message, "reasoning_content", None) is None


def stream_parts(client, enable_thinking):
    """The stream as a list of ("reasoning" | "content", text), and the finish reasons."""
    parts, finishes = [], []
    for chunk in create(client, True, enable_thinking):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if getattr(delta, "reasoning_content", None):
            parts.append(("reasoning", delta.reasoning_content))
        if delta.content:
            parts.append(("content", delta.content))
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    return parts, finishes


def test_streaming_sends_reasoning_deltas_then_content(client):
    parts, finishes = stream_parts(client, True)
    assert finishes == ["stop"]
    kinds = [k for k, _ in parts]
    assert "content" in kinds and "reasoning" in kinds
    first_content = kinds.index("content")
    assert all(k == "reasoning" for k in kinds[:first_content])
    assert all(k == "content" for k in kinds[first_content:])
    assert "".join(t for k, t in parts if k == "reasoning") == "".join(REASONING)
    assert "".join(t for k, t in parts if k == "content") == "".join(ANSWER)
    # Streamed token by token: more than one delta of each kind.
    assert kinds.count("reasoning") > 1 and kinds.count("content") > 1


def test_streaming_without_thinking_has_no_reasoning_deltas(client):
    parts, finishes = stream_parts(client, False)
    assert finishes == ["stop"]
    assert parts and all(k == "content" for k, _ in parts)
    assert "".join(t for _, t in parts) == "".join(DIRECT_ANSWER)


def test_max_tokens_inside_the_thinking_block_is_all_reasoning(client):
    # <think> Let " me": cut before </think>, so nothing is content yet.
    r = create(client, False, True, max_tokens=3)
    c = r.choices[0]
    assert c.finish_reason == "length"
    assert c.message.reasoning_content == "Let me"
    assert not c.message.content


def test_completions_endpoint_is_not_split(client):
    # /v1/completions has no chat template and no reasoning split: the raw text.
    r = client.completions.create(model=MODEL, prompt="\n", max_tokens=32, temperature=0)
    assert r.choices[0].text == "<think>" + "".join(REASONING) + "</think>" + "".join(ANSWER)
    assert r.choices[0].finish_reason == "stop"
