"""Cross-checks kiln's JSON Schema grammar against independent judges.

`kiln grammar --schema FILE --check` reads candidate documents (hex, one per
line) and answers accept/reject. The judges are Python's json module, the
`jsonschema` package (Draft 2020-12, with its format checker) and `re`.

Two kinds of checks:
- soundness, everywhere: every accepted document parses and validates;
- completeness, where the grammar promises it: documents written the way the
  grammar documents (schema property order, compact or single-space layout)
  that validate are accepted; and for scalar schemas (numbers, strings with
  lengths, patterns, dates) accept <=> valid exactly.
"""
import json
import random
import re
import subprocess

import jsonschema
import pytest

VALIDATOR = jsonschema.Draft202012Validator


def check(kiln_bin, tmp_path, schema, candidates):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    lines = "".join(c.hex() + "\n" for c in candidates)
    out = subprocess.run(
        [str(kiln_bin), "grammar", "--schema", str(path), "--check"],
        input=lines.encode(), capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    verdicts = out.stdout.decode().split()
    assert len(verdicts) == len(candidates)
    return [v == "accept" for v in verdicts]


def is_valid(schema, doc: bytes):
    try:
        text = doc.decode("utf-8")
        value = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        # A lone surrogate escape decodes in Python but is not Unicode text.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError):
        return False
    return VALIDATOR(schema, format_checker=VALIDATOR.FORMAT_CHECKER).is_valid(value)


# --- a generator of documents in the layout the grammar promises to accept --


class Gen:
    def __init__(self, root, seed):
        self.root = root
        self.r = random.Random(seed)

    def ws(self):
        return self.r.choice(["", "", " ", "\n  "])

    def string(self, lo=0, hi=None):
        hi = lo + 5 if hi is None else min(hi, lo + 5)
        chars = ["a", "Z", "5", " ", "é", "日", "😀", "\\n", '\\"', "\\\\", "\\u00e9",
                 "\\ud83d\\ude00", "/", "\\/"]
        return '"' + "".join(self.r.choice(chars) for _ in range(self.r.randint(lo, hi))) + '"'

    def number(self, integer):
        s = self.r.choice(["", "-"]) + self.r.choice(["0", str(self.r.randint(1, 10**6))])
        if not integer:
            if self.r.random() < 0.5:
                s += "." + str(self.r.randint(0, 999))
            if self.r.random() < 0.3:
                s += self.r.choice("eE") + self.r.choice(["", "+", "-"]) + str(self.r.randint(0, 20))
        return s

    def any(self, depth):
        k = self.r.randrange(5 if depth > 2 else 7)
        if k == 0:
            return "null"
        if k == 1:
            return self.r.choice(["true", "false"])
        if k == 2:
            return self.number(False)
        if k == 3:
            return self.string()
        if k == 4:
            return self.number(True)
        if k == 5:
            items = [self.any(depth + 1) for _ in range(self.r.randrange(3))]
            return "[" + (self.ws() + "," + self.ws()).join(items) + "]"
        members = [self.string(0, 3) + ":" + self.ws() + self.any(depth + 1)
                   for _ in range(self.r.randrange(3))]
        return "{" + ("," + self.ws()).join(members) + "}"

    def gen(self, s, depth=0):
        if s is True or s == {}:
            return self.any(depth)
        if "$ref" in s:
            target = self.root
            for part in s["$ref"][2:].split("/") if s["$ref"] != "#" else []:
                target = target[part]
            return self.gen(target, depth + 1)
        if "const" in s:
            return json.dumps(s["const"], separators=(",", ":"), ensure_ascii=False)
        if "enum" in s:
            return json.dumps(self.r.choice(s["enum"]), separators=(",", ":"), ensure_ascii=False)
        for key in ("anyOf", "oneOf"):
            if key in s:
                alts = s[key]
                return self.gen(alts[-1] if depth > 4 else self.r.choice(alts), depth + 1)
        t = s.get("type")
        if isinstance(t, list):
            t = self.r.choice(t)
        if t is None:
            return self.any(depth)
        if t == "null":
            return "null"
        if t == "boolean":
            return self.r.choice(["true", "false"])
        if t in ("integer", "number"):
            return self.number(t == "integer")
        if t == "string":
            if "format" in s:
                return '"' + {"date": "2024-02-29", "date-time": "2023-05-01T12:30:00.5+02:00",
                              "uuid": "123e4567-e89b-12d3-a456-426614174000",
                              "time": "23:59:59Z"}[s["format"]] + '"'
            return self.string(s.get("minLength", 0), s.get("maxLength"))
        if t == "array":
            lo, hi = s.get("minItems", 0), s.get("maxItems")
            prefix = s.get("prefixItems", [])
            n = lo + self.r.randrange(1 if depth > 3 else 4)
            if hi is not None:
                n = min(n, hi)
            if s.get("items") is False:
                n = min(n, len(prefix))
            items = [self.gen(prefix[i] if i < len(prefix) else s.get("items", True), depth + 1)
                     for i in range(n)]
            return "[" + self.ws() + ("," + self.ws()).join(items) + self.ws() + "]"
        required = set(s.get("required", []))
        members = []
        for name, sub in s.get("properties", {}).items():
            if name in required or (depth < 4 and self.r.random() < 0.5):
                members.append(json.dumps(name, ensure_ascii=False) + self.ws() + ":" + self.ws()
                               + self.gen(sub, depth + 1))
        return "{" + self.ws() + ("," + self.ws()).join(members) + self.ws() + "}"


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {
        "id": {"type": "integer"}, "title": {"type": "string", "minLength": 1, "maxLength": 4},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "status": {"enum": ["open", "closed", None, 3]}, "score": {"type": ["number", "null"]}},
     "required": ["id", "status"], "additionalProperties": False},
    {"type": "array", "items": {"type": "object", "properties": {
        "x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]}},
    {"$defs": {"node": {"type": "object", "properties": {
        "value": {"type": "integer"},
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["value"]}}, "$ref": "#/$defs/node"},
    {"type": "object", "properties": {"v": {"type": "integer"},
                                      "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
     "required": ["v", "next"]},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date"},
                                      "at": {"type": "string", "format": "date-time"},
                                      "uid": {"type": "string", "format": "uuid"}},
     "required": ["when", "at", "uid"]},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}],
     "items": {"type": "null"}, "minItems": 1, "maxItems": 4},
    {"oneOf": [{"type": "string", "maxLength": 2}, {"type": "array", "items": {"const": 1}}]},
    {"type": "object", "properties": {"a": {"type": "integer"}},
     "additionalProperties": {"type": "boolean"}},
    {"type": "object", "properties": {"meta": {"type": "object"}, "any": {}, "c": {"const": {"k": [1, "2"]}}},
     "required": ["meta", "any", "c"]},
]


def mutate(r, doc: bytes) -> bytes:
    alphabet = b'{}[],:" \n\\u0aE.-+etrufalsn\x01\xc3\xa9\xff'
    b = bytearray(doc)
    for _ in range(r.randint(1, 2)):
        if not b:
            break
        pos = r.randrange(len(b))
        op = r.randrange(3)
        if op == 0:
            b[pos] = r.choice(alphabet)
        elif op == 1:
            b.insert(pos, r.choice(alphabet))
        else:
            del b[pos]
    return bytes(b)


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_generated_documents_accepted_and_accepted_ones_validate(kiln_bin, tmp_path, index):
    schema = SCHEMAS[index]
    r = random.Random(index)
    docs = [Gen(schema, seed).gen(schema).encode() for seed in range(60)]
    for doc in docs:
        assert is_valid(schema, doc), f"generator bug: {doc!r}"
    mutants = [mutate(r, d) for d in docs for _ in range(5)]
    verdicts = check(kiln_bin, tmp_path, schema, docs + mutants)
    for doc, ok in zip(docs, verdicts[:len(docs)]):
        assert ok, f"valid document rejected: {doc!r}"
    n_accepted_mutants = 0
    for doc, ok in zip(mutants, verdicts[len(docs):]):
        if ok:
            n_accepted_mutants += 1
            assert is_valid(schema, doc), f"accepted but invalid: {doc!r}"
    assert n_accepted_mutants < len(mutants)


def random_strings(r, alphabet, n, max_len):
    return [bytes(r.choice(alphabet) for _ in range(r.randint(1, max_len))) for _ in range(n)]


@pytest.mark.parametrize("schema", [
    {"type": "number"}, {"type": "integer"}, {"type": "number", "minimum": 0},
    {"type": "integer", "minimum": -37, "maximum": 1234},
    {"type": "integer", "exclusiveMinimum": 0}, {"type": "integer", "maximum": -10},
])
def test_numbers_accept_exactly_the_valid_ones(kiln_bin, tmp_path, schema):
    r = random.Random(1)
    cands = random_strings(r, b"0123456789.-+eE", 3000, 6)
    cands += random_strings(r, b"-0123456789", 3000, 5)
    cands += [b"-0", b"1e5", b"1.5E-3", b"01", b"1.", b".5", b"-", b"0.0e+0", b"1.0"]
    for c, ok in zip(cands, check(kiln_bin, tmp_path, schema, cands)):
        if schema["type"] == "integer" and any(ch in c for ch in b".eE"):
            # Documented subset: integers are written without fraction or exponent.
            assert not ok, c
        elif schema["type"] == "number" and "minimum" in schema and c.startswith(b"-"):
            # Documented subset: non-negative numbers carry no minus sign (not even -0).
            assert not ok, c
        else:
            assert ok == is_valid(schema, c), c


def test_strings_accept_exactly_the_valid_ones(kiln_bin, tmp_path):
    schema = {"type": "string", "minLength": 1, "maxLength": 3}
    r = random.Random(2)
    pieces = [b"a", b" ", b"\\", b'"', b"u", b"d8", b"3d", b"de", b"00", b"0", b"n", b"t", b"/",
              b"\x01", b"\n", b"\x7f", b"\xc3", b"\xa9", b"\xe6\x97\xa5", b"\xf0\x9f\x98\x80",
              b"\xed\xa0\x80", b"\xc0\xaf", b"\xff", b"\\u00e9", b"\\ud83d\\ude00", b"\\ud83d"]
    cands = [b'"' + b"".join(r.choice(pieces) for _ in range(r.randint(0, 4))) + b'"'
             for _ in range(4000)]
    for c, ok in zip(cands, check(kiln_bin, tmp_path, schema, cands)):
        assert ok == is_valid(schema, c), c


@pytest.mark.parametrize("pattern", [
    "^[a-c]+$", "^\\d{2,3}-x?$", "ab", "^(ab|c)*$", "^a|b$", "^[^a]b.$", "c$", "^\\w+\\s\\W$",
])
def test_patterns_agree_with_re_search(kiln_bin, tmp_path, pattern):
    schema = {"type": "string", "pattern": pattern}
    r = random.Random(pattern)
    texts = ["".join(r.choice("abc12-x _!") for _ in range(r.randint(0, 5))) for _ in range(2000)]
    cands = [json.dumps(t).encode() for t in texts]
    for t, ok in zip(texts, check(kiln_bin, tmp_path, schema, cands)):
        assert ok == bool(re.search(pattern, t)), (pattern, t)


def test_dates_agree_with_the_format_checker(kiln_bin, tmp_path):
    schema = {"type": "string", "format": "date"}
    r = random.Random(3)
    texts = [f"{r.choice(['0000', '0001', '1900', '2000', '2023', '2024', '1996', '2100'])}-"
             f"{r.randint(0, 13):02d}-{r.randint(0, 32):02d}" for _ in range(3000)]
    texts += ["2024-02-29", "2023-02-29", "1900-02-29", "2000-02-29", "2023-1-01", "20230101"]
    cands = [json.dumps(t).encode() for t in texts]
    for c, ok in zip(cands, check(kiln_bin, tmp_path, schema, cands)):
        assert ok == is_valid(schema, c), c


@pytest.mark.parametrize("fmt,alphabet", [("email", "ab.@-+_1"), ("ipv4", "0125.9")])
def test_formats_accepted_ones_pass_the_format_checker(kiln_bin, tmp_path, fmt, alphabet):
    schema = {"type": "string", "format": fmt}
    r = random.Random(fmt)
    texts = ["".join(r.choice(alphabet) for _ in range(r.randint(3, 12))) for _ in range(4000)]
    texts += ["a@b.c", "x.y@mail.example.org", "255.255.255.255", "0.0.0.0", "256.1.1.1"]
    cands = [json.dumps(t).encode() for t in texts]
    n_accepted = 0
    for c, ok in zip(cands, check(kiln_bin, tmp_path, schema, cands)):
        if ok:
            n_accepted += 1
            assert is_valid(schema, c), c
    assert n_accepted >= 3


def test_unsupported_keyword_is_named(kiln_bin, tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"type": "object", "properties": {
        "n": {"type": "number", "multipleOf": 3}}}))
    out = subprocess.run([str(kiln_bin), "grammar", "--schema", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "'multipleOf'" in out.stderr and "#/properties/n/multipleOf" in out.stderr
