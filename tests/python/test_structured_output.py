"""response_format (json_object, json_schema) and enable_thinking end to end: a real
`kiln serve` on the default model, driven by the official openai client.

The judge is the `jsonschema` package: every response with finish_reason "stop" must
parse as JSON and validate against its schema. Responses cut by max_tokens
("length") are prefixes and are not judged, but most must finish.

Budget: ~130 short generations at temperature 0.7 (about 4000 tokens), sent 8 at a time
to a server with 8 slots (the scheduler batches them): 1-2 minutes on 2 cores.
"""
import concurrent.futures
import json

import jsonschema
import openai
import pytest
from kiln_server import KilnServer

MAX_TOKENS = 200
# Recursive documents may nest until max_tokens runs out; a smaller cap keeps the run short.
MAX_TOKENS_RECURSIVE = 120
SEEDS = [11, 22, 33, 44, 55]
SLOTS = 8

STR = {"type": "string", "maxLength": 24}

# (name, schema): flat, nested, arrays of objects, enums, optional fields, unions,
# $ref/$defs (recursive too), formats, patterns, bounds.
SCHEMAS = [
    ("flat_person", {"type": "object",
                     "properties": {"name": STR, "age": {"type": "integer"}},
                     "required": ["name", "age"], "additionalProperties": False}),
    ("flat_all_types", {"type": "object",
                        "properties": {"s": STR, "i": {"type": "integer"}, "n": {"type": "number"},
                                       "b": {"type": "boolean"}, "z": {"type": "null"}},
                        "required": ["s", "i", "n", "b", "z"], "additionalProperties": False}),
    ("enum_color", {"type": "object",
                    "properties": {"color": {"enum": ["red", "green", "blue"]}},
                    "required": ["color"], "additionalProperties": False}),
    ("enum_mixed", {"type": "object",
                    "properties": {"v": {"enum": [1, "two", None, True]},
                                   "c": {"const": "fixed"}},
                    "required": ["v", "c"], "additionalProperties": False}),
    ("optional_fields", {"type": "object",
                         "properties": {"title": STR, "subtitle": STR,
                                        "pages": {"type": "integer"}},
                         "required": ["title"], "additionalProperties": False}),
    ("nested_address", {"type": "object",
                        "properties": {"name": STR,
                                       "address": {"type": "object",
                                                   "properties": {"city": STR, "zip": STR},
                                                   "required": ["city", "zip"],
                                                   "additionalProperties": False}},
                        "required": ["name", "address"], "additionalProperties": False}),
    ("array_of_strings", {"type": "object",
                          "properties": {"tags": {"type": "array", "items": STR,
                                                  "minItems": 1, "maxItems": 3}},
                          "required": ["tags"], "additionalProperties": False}),
    ("array_of_objects", {"type": "object",
                          "properties": {"items": {"type": "array", "maxItems": 3, "items": {
                              "type": "object",
                              "properties": {"name": STR, "qty": {"type": "integer"}},
                              "required": ["name", "qty"], "additionalProperties": False}}},
                          "required": ["items"], "additionalProperties": False}),
    ("top_level_array", {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                         "maxItems": 4}),
    ("top_level_enum", {"enum": ["yes", "no", "maybe"]}),
    ("integer_bounds", {"type": "object",
                        "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
                        "required": ["score"], "additionalProperties": False}),
    ("string_lengths", {"type": "object",
                        "properties": {"code": {"type": "string", "minLength": 3, "maxLength": 5}},
                        "required": ["code"], "additionalProperties": False}),
    ("pattern", {"type": "object",
                 "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
                 "required": ["sku"], "additionalProperties": False}),
    ("formats", {"type": "object",
                 "properties": {"day": {"type": "string", "format": "date"},
                                "id": {"type": "string", "format": "uuid"}},
                 "required": ["day", "id"], "additionalProperties": False}),
    ("union_types", {"type": "object",
                     "properties": {"v": {"type": ["string", "integer"], "maxLength": 10},
                                    "w": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}},
                     "required": ["v", "w"], "additionalProperties": False}),
    ("one_of_shapes", {"oneOf": [
        {"type": "object", "properties": {"circle": {"type": "number", "minimum": 0}},
         "required": ["circle"], "additionalProperties": False},
        {"type": "object", "properties": {"square": {"type": "integer"}},
         "required": ["square"], "additionalProperties": False}]}),
    # A discriminated union (pydantic's shape): exactly one branch must match, which
    # the const "kind" of each (required) makes decidable; "discriminator" is OpenAPI's
    # hint beside it.
    ("one_of_discriminated", {
        "$defs": {
            "cat": {"type": "object",
                    "properties": {"kind": {"const": "cat"}, "name": STR,
                                   "lives": {"type": "integer", "minimum": 1, "maximum": 9}},
                    "required": ["kind", "name"], "additionalProperties": False},
            "dog": {"type": "object",
                    "properties": {"kind": {"const": "dog"}, "name": STR,
                                   "good": {"type": "boolean"}},
                    "required": ["kind", "name"]}},
        "oneOf": [{"$ref": "#/$defs/cat"}, {"$ref": "#/$defs/dog"}],
        "discriminator": {"propertyName": "kind"}}),
    ("prefix_items", {"type": "array",
                      "prefixItems": [STR, {"type": "integer"}, {"type": "boolean"}],
                      "items": False}),
    ("additional_schema", {"type": "object", "properties": {"id": {"type": "integer"}},
                           "required": ["id"], "additionalProperties": {"type": "integer"}}),
    ("defs_ref", {"$defs": {"point": {"type": "object",
                                      "properties": {"x": {"type": "integer"},
                                                     "y": {"type": "integer"}},
                                      "required": ["x", "y"], "additionalProperties": False}},
                  "type": "object",
                  "properties": {"start": {"$ref": "#/$defs/point"},
                                 "end": {"$ref": "#/$defs/point"}},
                  "required": ["start", "end"], "additionalProperties": False}),
    ("recursive_tree", {"$defs": {"node": {
        "type": "object",
        "properties": {"name": STR,
                       "children": {"type": "array", "maxItems": 2,
                                    "items": {"$ref": "#/$defs/node"}}},
        "required": ["name", "children"], "additionalProperties": False}},
        "$ref": "#/$defs/node"}),
    ("recursive_list", {"$defs": {"cell": {
        "type": "object",
        "properties": {"value": {"type": "integer"},
                       "next": {"anyOf": [{"$ref": "#/$defs/cell"}, {"type": "null"}]}},
        "required": ["value", "next"], "additionalProperties": False}},
        "$ref": "#/$defs/cell"}),
    ("nested_arrays", {"type": "object",
                       "properties": {"matrix": {"type": "array", "maxItems": 2,
                                                 "items": {"type": "array", "maxItems": 3,
                                                           "items": {"type": "integer"}}}},
                       "required": ["matrix"], "additionalProperties": False}),
]


def Server(kiln_bin, model, tmp_path, *extra):
    return KilnServer(kiln_bin, model, tmp_path, *extra, parallel=SLOTS)


@pytest.fixture(scope="module")
def server(kiln_bin, default_model, tmp_path_factory):
    s = Server(kiln_bin, default_model, tmp_path_factory.mktemp("serve_structured"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0,
                         timeout=300)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def json_schema_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def messages_for(schema):
    return [{"role": "system", "content": "You reply with JSON only."},
            {"role": "user", "content": "Give an example that matches this JSON schema: "
                                        + json.dumps(schema)}]


def validator_for(schema):
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def judge(schema, content, finish_reason):
    """Validates a stop response; returns whether it was one."""
    assert finish_reason in ("stop", "length")
    if finish_reason != "stop":
        return False
    doc = json.loads(content)  # raises: a "stop" response must be complete JSON
    validator_for(schema).validate(doc)
    return True


def test_schemas_are_valid_json_schema():
    # The oracle must be sound: every test schema is itself a valid schema.
    assert len(SCHEMAS) >= 20
    for _, schema in SCHEMAS:
        jsonschema.validators.validator_for(schema).check_schema(schema)


def test_json_schema_responses_validate(client, model_id):
    def run(name, schema, seed):
        r = client.chat.completions.create(
            model=model_id, messages=messages_for(schema), temperature=0.7, seed=seed,
            max_tokens=MAX_TOKENS_RECURSIVE if name.startswith("recursive") else MAX_TOKENS,
            response_format=json_schema_format(name, schema))
        c = r.choices[0]
        return name, seed, c.message.content, c.finish_reason

    stops = 0
    failures = []
    with concurrent.futures.ThreadPoolExecutor(SLOTS) as pool:
        futures = [pool.submit(run, name, schema, seed)
                   for name, schema in SCHEMAS for seed in SEEDS]
        schemas = dict(SCHEMAS)
        for f in futures:
            name, seed, content, finish = f.result()
            try:
                stops += judge(schemas[name], content, finish)
            except (ValueError, jsonschema.ValidationError) as e:
                failures.append(f"{name} seed {seed}: {content!r}: {e}")
    assert not failures, "\n".join(failures)
    # Most documents are short: nearly all must complete within MAX_TOKENS.
    assert stops >= 0.8 * len(SCHEMAS) * len(SEEDS), f"only {stops} responses finished"


def test_streaming_json_schema(client, model_id):
    picks = ["nested_address", "array_of_objects", "recursive_tree", "enum_mixed"]
    schemas = dict(SCHEMAS)

    def run(name, seed):
        chunks = list(client.chat.completions.create(
            model=model_id, messages=messages_for(schemas[name]), temperature=0.7, seed=seed,
            max_tokens=MAX_TOKENS, stream=True,
            response_format=json_schema_format(name, schemas[name])))
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks
                  if c.choices and c.choices[0].finish_reason]
        return name, content, finish

    with concurrent.futures.ThreadPoolExecutor(SLOTS) as pool:
        results = list(pool.map(lambda a: run(*a), [(n, s) for n in picks for s in SEEDS[:2]]))
    stops = 0
    for name, content, finish in results:
        assert len(finish) == 1
        stops += judge(schemas[name], content, finish[0])
    assert stops >= len(results) - 2


def test_streaming_matches_non_streaming(client, model_id):
    # Same seed, same schema: the stream's deltas add up to the whole response.
    name, schema = SCHEMAS[5]
    kw = dict(model=model_id, messages=messages_for(schema), temperature=0.7, seed=5,
              max_tokens=MAX_TOKENS, response_format=json_schema_format(name, schema))
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole


def test_json_object(client, model_id):
    def run(seed):
        r = client.chat.completions.create(
            model=model_id, temperature=0.7, seed=seed, max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": "Describe a cat as a JSON object."}],
            response_format={"type": "json_object"})
        return r.choices[0].message.content, r.choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(SLOTS) as pool:
        results = list(pool.map(run, SEEDS))
    stops = 0
    for content, finish in results:
        if finish == "stop":
            assert isinstance(json.loads(content), dict), content
            stops += 1
    assert stops >= 3


def test_text_format_is_unconstrained(client, model_id):
    kw = dict(model=model_id, temperature=0, max_tokens=12,
              messages=[{"role": "user", "content": "Say hello."}])
    plain = client.chat.completions.create(**kw).choices[0].message.content
    text = client.chat.completions.create(response_format={"type": "text"}, **kw)
    assert text.choices[0].message.content == plain


def test_max_tokens_first_is_length(client, model_id):
    schema = {"type": "object", "properties": {"story": {"type": "string", "minLength": 200}},
              "required": ["story"]}
    r = client.chat.completions.create(
        model=model_id, messages=messages_for(schema), temperature=0.7, seed=1, max_tokens=8,
        response_format=json_schema_format("story", schema))
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content.startswith("{")
    with pytest.raises(ValueError):
        json.loads(r.choices[0].message.content)


def test_completions_endpoint(client, model_id):
    schema = dict(SCHEMAS)["flat_person"]
    r = client.completions.create(
        model=model_id, prompt="A person as JSON: ", temperature=0.7, seed=3,
        max_tokens=MAX_TOKENS, extra_body={"response_format": json_schema_format("p", schema)})
    assert judge(schema, r.choices[0].text, r.choices[0].finish_reason)


@pytest.mark.parametrize("keyword,schema", [
    ("uniqueItems", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
    ("patternProperties", {"type": "object", "patternProperties": {"^x": {"type": "string"}}}),
    ("not", {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}),
    ("multipleOf", {"type": "integer", "multipleOf": 3}),
    # Branches that can match the same value (3 is both): exactly-one is not enforceable.
    ("oneOf", {"oneOf": [{"type": "integer"}, {"type": "number"}]}),
    ("oneOf", {"type": "object", "properties": {"pet": {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "cat"}}},
        {"type": "object", "properties": {"kind": {"const": "dog"}}}]}}}),
])
def test_unsupported_keyword_is_400_naming_it(client, model_id, keyword, schema):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            response_format=json_schema_format("x", schema))
    assert e.value.status_code == 400
    assert f"'{keyword}'" in e.value.message
    assert e.value.body["param"] == "response_format.json_schema.schema"


def test_malformed_response_format_is_400(client, model_id):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            response_format={"type": "json_schema"})
    assert e.value.body["param"] == "response_format.json_schema"


def test_enable_thinking_without_thinking_template_has_no_effect(client, model_id):
    # SmolLM2's ChatML template knows no <think>: the field is accepted and changes nothing.
    kw = dict(model=model_id, temperature=0, max_tokens=16,
              messages=[{"role": "user", "content": "What is 2+2?"}])
    plain = client.chat.completions.create(**kw)
    for flag in (True, False):
        r = client.chat.completions.create(extra_body={"enable_thinking": flag}, **kw)
        assert r.choices[0].message.content == plain.choices[0].message.content
        assert getattr(r.choices[0].message, "reasoning_content", None) is None
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(extra_body={"enable_thinking": "yes"}, **kw)


def test_enable_thinking_reaches_a_thinking_template(kiln_bin, default_model, tmp_path):
    # The built-in Qwen3 template (SmolLM2 shares its ChatML tokens) writes an empty
    # "<think>\n\n</think>\n\n" block into the prompt when enable_thinking is false: the
    # prompt grows by those tokens. (The split of a <think> block into reasoning_content is
    # tested end to end on a scripted token stream in test_structured_reasoning.py: this
    # model never writes one.)
    s = Server(kiln_bin, default_model, tmp_path, "--chat-template", "qwen3")
    try:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", max_retries=0, timeout=120)
        model = c.models.list().data[0].id
        kw = dict(model=model, temperature=0, max_tokens=8,
                  messages=[{"role": "user", "content": "What is 2+2?"}])
        on = c.chat.completions.create(extra_body={"enable_thinking": True}, **kw)
        off = c.chat.completions.create(extra_body={"enable_thinking": False}, **kw)
        unset = c.chat.completions.create(**kw)
        assert on.usage.prompt_tokens == unset.usage.prompt_tokens
        assert off.usage.prompt_tokens > on.usage.prompt_tokens
        for r in (on, off, unset):
            assert r.choices[0].message.content
            assert "<think>" not in r.choices[0].message.content
    finally:
        s.stop()
