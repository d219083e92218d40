// JSON Schema -> grammar -> matcher: accepted and rejected byte strings for
// each supported keyword, plus a property test (random documents generated
// from a schema by an independent generator are accepted byte by byte).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>

#include "sampler/grammar.h"
#include "sampler/json_schema.h"
#include "sampler/json_text.h"

namespace kiln {
namespace {

using ojson = nlohmann::ordered_json;

std::shared_ptr<const Grammar> compile(const std::string& schema) {
  return JsonGrammar::from_schema_text(schema);
}

// Whole-document match: every byte accepted and the value complete.
bool matches(const std::shared_ptr<const Grammar>& g, const std::string& doc) {
  GrammarMatcher m(g);
  return m.accept_bytes(doc) && m.is_complete();
}

bool matches(const std::string& schema, const std::string& doc) {
  return matches(compile(schema), doc);
}

#define EXPECT_ACCEPTS(schema, doc) EXPECT_TRUE(matches(schema, doc)) << "doc: " << (doc)
#define EXPECT_REJECTS(schema, doc) EXPECT_FALSE(matches(schema, doc)) << "doc: " << (doc)

UnsupportedSchema unsupported(const std::string& schema) {
  try {
    compile(schema);
  } catch (const UnsupportedSchema& e) {
    return e;
  }
  ADD_FAILURE() << "schema compiled but should be unsupported: " << schema;
  return UnsupportedSchema("", "", "");
}

TEST(GrammarCore, ByteSetsRulesAndRollback) {
  auto g = std::make_shared<Grammar>();
  // root ::= "a" b*  "c" ; b ::= "b"
  GrammarElement b = g->literal("b");
  int32_t root = g->add_rule("root");
  g->add_alternative(root, {g->byte('a'), g->star(b), g->byte('c')});
  g->set_root(root);
  GrammarMatcher m(g);
  EXPECT_FALSE(m.accept_byte('b'));
  EXPECT_TRUE(m.accept_byte('a'));
  GrammarMatcher saved = m;
  EXPECT_TRUE(m.accept_bytes("bbb"));
  EXPECT_FALSE(m.accept_bytes("bbx"));  // all or nothing
  EXPECT_TRUE(m.accept_byte('c'));
  EXPECT_TRUE(m.is_complete());
  EXPECT_TRUE(m.is_final());
  EXPECT_FALSE(saved.is_complete());
  EXPECT_TRUE(saved.accept_byte('c'));  // the copy is unaffected
}

TEST(GrammarCore, LeftRecursionIsRejected) {
  auto g = std::make_shared<Grammar>();
  int32_t r = g->add_rule("r");
  int32_t e = g->add_rule("e");
  g->add_alternative(e, {});
  g->add_alternative(r, {Grammar::ref(e), Grammar::ref(r), g->byte('x')});
  g->add_alternative(r, {g->byte('y')});
  g->set_root(r);
  EXPECT_THROW(g->validate(), std::invalid_argument);
  auto g2 = std::make_shared<Grammar>();
  int32_t empty = g2->add_rule("empty");
  g2->add_alternative(empty, {});
  int32_t root = g2->add_rule("root");
  g2->add_alternative(root, {g2->star(Grammar::ref(empty))});
  g2->set_root(root);
  EXPECT_THROW(g2->validate(), std::invalid_argument);
}

TEST(JsonSchema, Scalars) {
  EXPECT_ACCEPTS(R"({"type":"null"})", "null");
  EXPECT_REJECTS(R"({"type":"null"})", "nul");
  EXPECT_ACCEPTS(R"({"type":"boolean"})", "true");
  EXPECT_ACCEPTS(R"({"type":"boolean"})", "false");
  EXPECT_REJECTS(R"({"type":"boolean"})", "True");
  EXPECT_REJECTS(R"({"type":"boolean"})", "null");
  EXPECT_ACCEPTS(R"({"type":"string"})", R"("hi")");
  EXPECT_REJECTS(R"({"type":"string"})", R"("hi)");
  EXPECT_REJECTS(R"({"type":"string"})", "'hi'");
}

TEST(JsonSchema, NumbersInAllJsonForms) {
  const std::string number = R"({"type":"number"})";
  for (const char* ok : {"0", "-0", "1", "-1", "10", "123456789", "1e5", "1E5", "1.5E-3", "1.5e+3",
                         "-0.0", "0.25", "-12.25e+10", "0e0", "3.14159"}) {
    EXPECT_ACCEPTS(number, ok);
  }
  for (const char* bad : {"01", "-01", "00", "-", "+1", "1.", ".5", "1e", "1e+", "1.5e", "--1",
                          "1..2", "0x10", "NaN", "Infinity", "1 ", " 1", "1,"}) {
    EXPECT_REJECTS(number, bad);
  }
  const std::string integer = R"({"type":"integer"})";
  for (const char* ok : {"0", "-0", "7", "-42", "9007199254740993"}) EXPECT_ACCEPTS(integer, ok);
  for (const char* bad : {"1.0", "1e5", "01", "-", "1.5"}) EXPECT_REJECTS(integer, bad);
}

TEST(JsonSchema, IntegerBoundsMatchArithmetic) {
  struct Bounds {
    std::string keywords;
    long lo, hi;  // inclusive; +-inf (below) for unbounded
  };
  const long inf = 1000000000000L;  // beyond every probe
  const std::vector<Bounds> cases = {
      {R"("minimum":0)", 0, inf},
      {R"("minimum":1,"maximum":100)", 1, 100},
      {R"("minimum":-37,"maximum":1234)", -37, 1234},
      {R"("maximum":-5)", -inf, -5},
      {R"("exclusiveMinimum":-1.5,"exclusiveMaximum":7)", -1, 6},
      {R"("minimum":10.2,"maximum":99.9)", 11, 99},
      {R"("minimum":-999,"maximum":-100)", -999, -100},
      {R"("minimum":7,"maximum":7)", 7, 7},
      {R"("minimum":105,"maximum":1000)", 105, 1000},
      {R"("minimum":0,"maximum":0)", 0, 0},
  };
  for (const auto& c : cases) {
    auto g = compile(R"({"type":"integer",)" + c.keywords + "}");
    for (long v = -1500; v <= 1500; ++v) {
      EXPECT_EQ(matches(g, std::to_string(v)), v >= c.lo && v <= c.hi) << c.keywords << " " << v;
    }
    for (long v : {123456789L, -123456789L, 99999999999L}) {
      EXPECT_EQ(matches(g, std::to_string(v)), v >= c.lo && v <= c.hi) << c.keywords << " " << v;
    }
    EXPECT_EQ(matches(g, "-0"), 0 >= c.lo && 0 <= c.hi) << c.keywords;
    EXPECT_FALSE(matches(g, "007")) << c.keywords;
  }
  EXPECT_THROW(compile(R"({"type":"integer","minimum":5,"maximum":4})"), UnsatisfiableSchema);
  auto non_negative = compile(R"({"type":"number","minimum":0})");
  EXPECT_TRUE(matches(non_negative, "0.5e-3"));
  EXPECT_TRUE(matches(non_negative, "12"));
  EXPECT_FALSE(matches(non_negative, "-0.5"));
  EXPECT_EQ(unsupported(R"({"type":"number","maximum":3})").keyword(), "maximum");
  EXPECT_EQ(unsupported(R"({"minimum":3})").keyword(), "minimum");
  EXPECT_EQ(unsupported(R"({"type":"integer","exclusiveMinimum":true})").keyword(),
            "exclusiveMinimum");
}

TEST(JsonSchema, StringEscapesAndUtf8) {
  const std::string s = R"({"type":"string"})";
  EXPECT_ACCEPTS(s, R"("\n\t\"\\\/\b\f\r")");
  EXPECT_ACCEPTS(s, R"("\u0041\u00e9\uFFFF")");
  EXPECT_ACCEPTS(s, R"("\uD83D\uDE00")");  // surrogate pair
  EXPECT_ACCEPTS(s, R"("\ud83d\ude00 ok")");
  EXPECT_REJECTS(s, R"("\uD83D")");        // lone high surrogate
  EXPECT_REJECTS(s, R"("\uDE00")");        // lone low surrogate
  EXPECT_REJECTS(s, R"("\uD83D\u0041")");  // high not followed by low
  EXPECT_REJECTS(s, R"("\uD83Dx")");
  EXPECT_REJECTS(s, R"("\u12")");
  EXPECT_REJECTS(s, R"("\x41")");
  EXPECT_REJECTS(s, R"("\a")");
  EXPECT_ACCEPTS(s, "\"h\xC3\xA9llo \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80\"");  // héllo 日本 😀
  EXPECT_ACCEPTS(s, "\"\x7F\"");  // DEL is allowed raw by JSON
  EXPECT_REJECTS(s, "\"a\nb\"");  // raw control characters
  EXPECT_REJECTS(s, std::string("\"a\0b\"", 5));
  EXPECT_REJECTS(s, "\"\x01\"");
  EXPECT_REJECTS(s, "\"\xC0\xAF\"");          // overlong '/'
  EXPECT_REJECTS(s, "\"\xE0\x80\xAF\"");      // overlong
  EXPECT_REJECTS(s, "\"\xED\xA0\x80\"");      // UTF-8 encoded surrogate
  EXPECT_REJECTS(s, "\"\xF4\x90\x80\x80\"");  // above U+10FFFF
  EXPECT_REJECTS(s, "\"\xF5\x80\x80\x80\"");
  EXPECT_REJECTS(s, "\"\xFF\"");
  EXPECT_REJECTS(s, "\"\x80\"");      // lone continuation byte
  EXPECT_REJECTS(s, "\"\xE6\x97\"");  // truncated sequence
}

TEST(JsonSchema, StringLengthCountsCodePoints) {
  const std::string s = R"({"type":"string","minLength":2,"maxLength":3})";
  EXPECT_REJECTS(s, R"("a")");
  EXPECT_ACCEPTS(s, R"("ab")");
  EXPECT_ACCEPTS(s, R"("abc")");
  EXPECT_REJECTS(s, R"("abcd")");
  EXPECT_ACCEPTS(s, "\"\xE6\x97\xA5\xE6\x9C\xAC\"");  // 2 code points, 6 bytes
  EXPECT_ACCEPTS(s, R"("\n\u0041\uD83D\uDE00")");     // 3 escapes = 3 code points
  EXPECT_REJECTS(s, R"("\n\u0041\uD83D\uDE00x")");
  EXPECT_ACCEPTS(R"({"type":"string","maxLength":0})", R"("")");
  EXPECT_REJECTS(R"({"type":"string","maxLength":0})", R"("a")");
}

TEST(JsonSchema, EnumAndConst) {
  const std::string e = R"({"enum":["red","green",3,null,{"a":[1,2]}]})";
  EXPECT_ACCEPTS(e, R"("red")");
  EXPECT_ACCEPTS(e, "3");
  EXPECT_ACCEPTS(e, "null");
  EXPECT_ACCEPTS(e, R"({"a":[1,2]})");
  EXPECT_REJECTS(e, R"("blue")");
  EXPECT_REJECTS(e, R"("re")");
  EXPECT_REJECTS(e, "30");
  EXPECT_ACCEPTS(R"({"const":"x\"y"})", R"("x\"y")");
  // pydantic's Literal["a"]: const and enum together.
  EXPECT_ACCEPTS(R"({"const":"a","enum":["a"],"type":"string"})", R"("a")");
  EXPECT_THROW(compile(R"({"const":"a","enum":["b"]})"), UnsatisfiableSchema);
  EXPECT_REJECTS(R"({"const":"x\"y"})", R"("xy")");
  // A sibling type filters the values.
  EXPECT_REJECTS(R"({"type":"string","enum":["a",1]})", "1");
  EXPECT_ACCEPTS(R"({"type":"string","enum":["a",1]})", R"("a")");
}

TEST(JsonSchema, ObjectPropertiesRequiredAndOrder) {
  const std::string s = R"({"type":"object","properties":{
      "name":{"type":"string"},"age":{"type":"integer"},"tag":{"type":"boolean"}},
      "required":["name","tag"]})";
  EXPECT_ACCEPTS(s, R"({"name":"a","age":3,"tag":true})");
  EXPECT_ACCEPTS(s, R"({"name":"a","tag":false})");         // optional skipped
  EXPECT_REJECTS(s, R"({"name":"a","age":3})");             // required missing
  EXPECT_REJECTS(s, R"({"age":3,"name":"a","tag":true})");  // out of schema order
  EXPECT_REJECTS(s, R"({"name":"a","tag":true,"x":1})");    // no extras by default
  EXPECT_REJECTS(s, R"({"name":1,"tag":true})");
  EXPECT_REJECTS(s, R"({"name":"a","name":"b","tag":true})");
  EXPECT_REJECTS(s, R"({})");
  const std::string all_optional = R"({"type":"object","properties":{"a":{"type":"integer"},
      "b":{"type":"integer"}}})";
  EXPECT_ACCEPTS(all_optional, "{}");
  EXPECT_ACCEPTS(all_optional, R"({"b":2})");
  EXPECT_ACCEPTS(all_optional, R"({"a":1,"b":2})");
  EXPECT_REJECTS(all_optional, R"({,"b":2})");
  EXPECT_REJECTS(all_optional, R"({"a":1,})");
  EXPECT_REJECTS(all_optional, R"({"a":1 "b":2})");
}

TEST(JsonSchema, AdditionalProperties) {
  const std::string extra_ints = R"({"type":"object","properties":{"a":{"type":"string"}},
      "additionalProperties":{"type":"integer"}})";
  EXPECT_ACCEPTS(extra_ints, R"({"a":"x","b":1,"cc":2})");
  EXPECT_ACCEPTS(extra_ints, R"({"b":1})");
  EXPECT_ACCEPTS(extra_ints, R"({"ab":1,"":2,"x\n":3})");  // names that only share a prefix
  // Escapes only once the name has diverged, so none can spell "a" (a subset).
  EXPECT_REJECTS(extra_ints, R"({"\u0061":1})");
  EXPECT_REJECTS(extra_ints, R"({"\n":1})");
  EXPECT_REJECTS(extra_ints, R"({"a":"x","b":"y"})");  // extra value must be an integer
  EXPECT_REJECTS(extra_ints, R"({"a":"x","a":1})");    // an extra cannot reuse a declared name
  EXPECT_REJECTS(extra_ints, R"({"b":1,"a":"x"})");    // declared ones come first
  const std::string closed = R"({"type":"object","properties":{"a":{"type":"string"}},
      "additionalProperties":false})";
  EXPECT_ACCEPTS(closed, R"({"a":"x"})");
  EXPECT_REJECTS(closed, R"({"a":"x","b":1})");
  const std::string open = R"({"type":"object","properties":{"a":{"type":"string"}},
      "additionalProperties":true})";
  EXPECT_ACCEPTS(open, R"({"a":"x","b":[1,{"c":null}]})");
  // No properties at all: any object.
  EXPECT_ACCEPTS(R"({"type":"object"})", R"({"x":{"y":[1,"2",true,null,-0.5e3]}})");
  EXPECT_REJECTS(R"({"type":"object"})", R"([])");
}

TEST(JsonSchema, Arrays) {
  const std::string ints = R"({"type":"array","items":{"type":"integer"}})";
  EXPECT_ACCEPTS(ints, "[]");
  EXPECT_ACCEPTS(ints, "[1,2,3]");
  EXPECT_ACCEPTS(ints, "[ 1, 2 ]");
  EXPECT_REJECTS(ints, "[1,]");
  EXPECT_REJECTS(ints, "[,1]");
  EXPECT_REJECTS(ints, "[1,\"a\"]");
  const std::string bounded = R"({"type":"array","items":{"type":"integer"},"minItems":2,
      "maxItems":3})";
  EXPECT_REJECTS(bounded, "[1]");
  EXPECT_ACCEPTS(bounded, "[1,2]");
  EXPECT_ACCEPTS(bounded, "[1,2,3]");
  EXPECT_REJECTS(bounded, "[1,2,3,4]");
  const std::string tuple = R"({"type":"array","prefixItems":[{"type":"string"},
      {"type":"integer"}],"items":false})";
  EXPECT_ACCEPTS(tuple, R"(["a",1])");
  EXPECT_ACCEPTS(tuple, R"(["a"])");  // prefixItems do not require presence
  EXPECT_REJECTS(tuple, R"(["a",1,2])");
  EXPECT_REJECTS(tuple, R"([1,"a"])");
  const std::string tuple_rest = R"({"type":"array","prefixItems":[{"type":"string"}],
      "items":{"type":"boolean"},"minItems":2})";
  EXPECT_ACCEPTS(tuple_rest, R"(["a",true,false])");
  EXPECT_REJECTS(tuple_rest, R"(["a"])");
  EXPECT_REJECTS(tuple_rest, R"(["a","b"])");
  // Draft-7 array form of items.
  EXPECT_ACCEPTS(R"({"items":[{"type":"null"}],"additionalItems":false})", "[null]");
  EXPECT_REJECTS(R"({"items":[{"type":"null"}],"additionalItems":false})", "[null,null]");
  // No items keyword: anything.
  EXPECT_ACCEPTS(R"({"type":"array"})", R"([1,"a",[{}]])");
}

TEST(JsonSchema, UnionsAnyOfOneOf) {
  const std::string u = R"({"type":["string","null"]})";
  EXPECT_ACCEPTS(u, "null");
  EXPECT_ACCEPTS(u, R"("x")");
  EXPECT_REJECTS(u, "1");
  const std::string any = R"({"anyOf":[{"type":"integer"},{"type":"object","properties":
      {"k":{"type":"string"}},"required":["k"]}]})";
  EXPECT_ACCEPTS(any, "12");
  EXPECT_ACCEPTS(any, R"({"k":"v"})");
  EXPECT_REJECTS(any, R"({"k":1})");
  EXPECT_ACCEPTS(R"({"oneOf":[{"const":1},{"const":"1"}]})", R"("1")");
  EXPECT_ACCEPTS(R"({"allOf":[{"type":"integer"}]})", "5");
}

// oneOf compiles like anyOf, so it is accepted only where no value can match
// two branches (then the output matches exactly one), and otherwise rejected
// naming oneOf.
TEST(JsonSchema, OneOfNeedsProvablyDisjointBranches) {
  const std::string pets = R"({"oneOf":[
      {"type":"object","properties":{"kind":{"const":"cat"},"lives":{"type":"integer"}},
       "required":["kind","lives"]},
      {"type":"object","properties":{"kind":{"const":"dog"},"good":{"type":"boolean"}},
       "required":["kind"]}],
      "discriminator":{"propertyName":"kind"}})";
  EXPECT_ACCEPTS(pets, R"({"kind":"cat","lives":9})");
  EXPECT_ACCEPTS(pets, R"({"kind":"dog","good":true})");
  EXPECT_ACCEPTS(pets, R"({"kind":"dog"})");
  EXPECT_REJECTS(pets, R"({"kind":"cow"})");
  EXPECT_REJECTS(pets, R"({"kind":"cat"})");
  EXPECT_REJECTS(pets, R"({"kind":"cat","good":true})");
  EXPECT_REJECTS(pets, R"({"lives":9})");
  // The same through $ref, with enum discriminators and a single-entry allOf.
  const std::string refs = R"({"$defs":{
      "a":{"type":"object","properties":{"t":{"enum":["x","y"]},"n":{"type":"integer"}},
           "required":["t","n"],"additionalProperties":false},
      "b":{"allOf":[{"type":"object","properties":{"t":{"enum":["z"]}},"required":["t"]}]}},
      "oneOf":[{"$ref":"#/$defs/a"},{"$ref":"#/$defs/b"}]})";
  EXPECT_ACCEPTS(refs, R"({"t":"y","n":1})");
  EXPECT_ACCEPTS(refs, R"({"t":"z"})");
  EXPECT_REJECTS(refs, R"({"t":"z","n":1})");
  // Different JSON types, unions inside a branch, const values.
  EXPECT_ACCEPTS(R"({"oneOf":[{"type":"string"},{"type":["null","boolean"]}]})", "false");
  EXPECT_ACCEPTS(R"({"oneOf":[{"anyOf":[{"type":"string"},{"type":"null"}]},
      {"type":"integer"}]})",
                 "7");
  EXPECT_ACCEPTS(R"({"oneOf":[{"const":1},{"const":2},{"enum":["1",[1]]}]})", "[1]");
  EXPECT_ACCEPTS(R"({"oneOf":[{"const":{"k":"a"}},
      {"type":"object","properties":{"k":{"const":"b"}}}]})",
                 R"({"k":"b"})");
  // A name one branch requires and the other forbids.
  EXPECT_ACCEPTS(R"({"oneOf":[
      {"type":"object","properties":{"a":{"type":"integer"}},"required":["a"],
       "additionalProperties":false},
      {"type":"object","properties":{"b":{"type":"integer"}},"required":["b"],
       "additionalProperties":false}]})",
                 R"({"b":2})");

  auto rejected = [](const std::string& schema, const std::string& path) {
    const UnsupportedSchema e = unsupported(schema);
    EXPECT_EQ(e.keyword(), "oneOf") << schema;
    EXPECT_EQ(e.path(), path) << schema;
  };
  // 3 is an integer and a number.
  rejected(R"({"oneOf":[{"type":"integer"},{"type":"number"}]})", "#/oneOf");
  rejected(R"({"oneOf":[{"type":"string"},{"type":"string","maxLength":3}]})", "#/oneOf");
  // {} matches both: the discriminator is not required.
  rejected(R"({"oneOf":[{"type":"object","properties":{"k":{"const":"a"}}},
      {"type":"object","properties":{"k":{"const":"b"}}}]})",
           "#/oneOf");
  // Without "type", a schema of object keywords also accepts every non-object.
  rejected(R"({"oneOf":[{"properties":{"k":{"const":"a"}},"required":["k"]},
      {"type":"string"}]})",
           "#/oneOf");
  // Equal values (1 and 1.0 are the same number; members in any order).
  rejected(R"({"oneOf":[{"enum":[1,2]},{"const":2}]})", "#/oneOf");
  rejected(R"({"oneOf":[{"const":1},{"const":1.0}]})", "#/oneOf");
  rejected(R"({"oneOf":[{"const":{"a":1,"b":2}},{"const":{"b":2,"a":1}}]})", "#/oneOf");
  rejected(R"({"oneOf":[true,{"type":"null"}]})", "#/oneOf");
  rejected(R"({"oneOf":[{"type":"null"},{"type":"boolean"},{"enum":[null,3]}]})", "#/oneOf");
  rejected(R"({"type":"object","properties":{"x":{"oneOf":[{"type":"array"},
      {"type":"array","maxItems":1}]}}})",
           "#/properties/x/oneOf");
  // Self-references make the proof branch exponentially (3^24 paths here
  // unbounded): the work is bounded, and the unproven oneOf rejected.
  rejected(R"({"$defs":{"n":{"type":"array","items":{"oneOf":[
      {"$ref":"#/$defs/u"},{"$ref":"#/$defs/u"}]}},
      "u":{"anyOf":[{"$ref":"#/$defs/u"},{"$ref":"#/$defs/u"},{"$ref":"#/$defs/n"}]}},
      "$ref":"#/$defs/n"})",
           "#/$defs/n/items/oneOf");
  // anyOf takes the same overlapping branches.
  EXPECT_ACCEPTS(R"({"anyOf":[{"type":"integer"},{"type":"number"}]})", "3");
}

// Keywords of the supported subset not covered above, each with accepted and
// rejected documents.
TEST(JsonSchema, MoreKeywordCombinations) {
  // A union of types applies each type's own keywords.
  const std::string u = R"({"type":["string","integer","array"],"maxLength":2,"minimum":0,
      "maxItems":1,"items":{"type":"null"}})";
  EXPECT_ACCEPTS(u, R"("ab")");
  EXPECT_ACCEPTS(u, "5");
  EXPECT_ACCEPTS(u, "[null]");
  EXPECT_REJECTS(u, R"("abc")");
  EXPECT_REJECTS(u, "-5");
  EXPECT_REJECTS(u, "[null,null]");
  EXPECT_REJECTS(u, "true");
  // A required name that properties does not declare: any value, required.
  const std::string req = R"({"type":"object","properties":{"a":{"type":"integer"}},
      "required":["a","extra"]})";
  EXPECT_ACCEPTS(req, R"({"a":1,"extra":[true]})");
  EXPECT_REJECTS(req, R"({"a":1})");
  // Property names and values with Unicode, written raw or escaped.
  const std::string uni = R"({"type":"object","properties":{"caf\u00e9":{"const":"\u65e5"}},
      "required":["café"]})";
  EXPECT_ACCEPTS(uni, "{\"caf\xC3\xA9\":\"\xE6\x97\xA5\"}");
  EXPECT_REJECTS(uni, R"({"cafe":"日"})");
  // minItems / maxItems alone and at 0; a prefix longer than minItems.
  EXPECT_ACCEPTS(R"({"type":"array","maxItems":0})", "[]");
  EXPECT_REJECTS(R"({"type":"array","maxItems":0})", "[1]");
  EXPECT_REJECTS(R"({"type":"array","minItems":1})", "[]");
  EXPECT_ACCEPTS(R"({"type":"array","minItems":1})", R"([{}])");
  const std::string prefix = R"({"prefixItems":[{"type":"integer"},{"type":"string"}],
      "minItems":1,"maxItems":3})";
  EXPECT_ACCEPTS(prefix, "[1]");
  EXPECT_ACCEPTS(prefix, R"([1,"a",{"any":true}])");
  EXPECT_REJECTS(prefix, "[]");
  EXPECT_REJECTS(prefix, R"([1,"a",2,3])");
  EXPECT_REJECTS(prefix, R"(["a"])");
  // Mutual recursion through $defs.
  const std::string mutual = R"({"$defs":{
      "a":{"type":"object","properties":{"b":{"$ref":"#/$defs/b"}},"required":["b"]},
      "b":{"anyOf":[{"type":"null"},{"type":"array","items":{"$ref":"#/$defs/a"}}]}},
      "$ref":"#/$defs/a"})";
  EXPECT_ACCEPTS(mutual, R"({"b":null})");
  EXPECT_ACCEPTS(mutual, R"({"b":[{"b":null},{"b":[]}]})");
  EXPECT_REJECTS(mutual, R"({"b":[{"b":1}]})");
  EXPECT_REJECTS(mutual, R"({"b":[null]})");
  // Numbers as enum and const values: their compact form.
  EXPECT_ACCEPTS(R"({"enum":[-1.5,2e3,0]})", "-1.5");
  EXPECT_ACCEPTS(R"({"enum":[-1.5,2e3,0]})", "2000.0");
  EXPECT_REJECTS(R"({"enum":[-1.5,2e3,0]})", "1.5");
  // Numbers inside documents, in every JSON form.
  const std::string nums = R"({"type":"array","items":{"type":"number"}})";
  EXPECT_ACCEPTS(nums, "[0,-0,1.25,-3e-7,6.02E+23,1e0]");
  EXPECT_REJECTS(nums, "[1.e5]");
  EXPECT_REJECTS(nums, "[+1]");
  // format and pattern inside objects; date-time boundaries.
  const std::string dt = R"({"type":"string","format":"date-time"})";
  EXPECT_ACCEPTS(dt, R"("2024-02-29T00:00:00.5-12:00")");
  EXPECT_REJECTS(dt, R"("2023-02-29T00:00:00Z")");
  EXPECT_REJECTS(dt, R"("2024-01-01T12:60:00Z")");
  EXPECT_REJECTS(R"({"type":"string","format":"uuid"})", R"("123e4567-e89b-12d3-a456-4266141740")");
}

TEST(JsonSchema, RefsAndRecursion) {
  const std::string tree = R"({"$ref":"#/$defs/node","$defs":{"node":{"type":"object",
      "properties":{"value":{"type":"integer"},"children":{"type":"array",
      "items":{"$ref":"#/$defs/node"}}},"required":["value"]}}})";
  EXPECT_ACCEPTS(tree, R"({"value":1})");
  EXPECT_ACCEPTS(tree,
                 R"({"value":1,"children":[{"value":2,"children":[{"value":3}]},{"value":4}]})");
  EXPECT_REJECTS(tree, R"({"value":1,"children":[{"children":[]}]})");
  const std::string list = R"({"type":"object","properties":{"v":{"type":"integer"},
      "next":{"anyOf":[{"$ref":"#"},{"type":"null"}]}},"required":["v","next"]})";
  EXPECT_ACCEPTS(list, R"({"v":1,"next":{"v":2,"next":null}})");
  EXPECT_REJECTS(list, R"({"v":1,"next":{"v":2}})");
  EXPECT_ACCEPTS(R"({"definitions":{"a":{"type":"boolean"}},"$ref":"#/definitions/a"})", "true");
  // A reference that expands to itself without consuming anything.
  EXPECT_EQ(unsupported(R"({"anyOf":[{"$ref":"#"},{"type":"null"}]})").keyword(), "$ref");
  EXPECT_EQ(unsupported(R"({"$ref":"#/$defs/missing"})").keyword(), "$ref");
  EXPECT_EQ(unsupported(R"({"$ref":"https://example.com/s.json"})").keyword(), "$ref");
}

TEST(JsonSchema, DeepNesting) {
  auto g = JsonGrammar::any_value();
  std::string deep = std::string(300, '[') + std::string(300, ']');
  EXPECT_TRUE(matches(g, deep));
  EXPECT_FALSE(matches(g, std::string(300, '[') + std::string(299, ']')));
  EXPECT_FALSE(matches(g, std::string(300, '[') + std::string(299, ']') + "}"));
  std::string objs;
  for (int i = 0; i < 100; ++i) objs += "{\"a\":";
  objs += "1";
  objs += std::string(100, '}');
  EXPECT_TRUE(matches(g, objs));
}

TEST(JsonSchema, WhitespaceIsBounded) {
  const std::string s = R"({"type":"object","properties":{"a":{"type":"integer"}}})";
  EXPECT_ACCEPTS(s, R"({ "a" : 1 })");
  EXPECT_ACCEPTS(s, "{\n  \"a\": 1\n}");
  EXPECT_ACCEPTS(s, "{\n\t\"a\":\n\t\t1\n}");
  EXPECT_REJECTS(s, R"({  "a":1})");  // two spaces
  EXPECT_REJECTS(s, "{\n\n\"a\":1}");
  EXPECT_REJECTS(s, "{\n" + std::string(21, ' ') + "\"a\":1}");
  EXPECT_ACCEPTS(s, "{\n" + std::string(20, ' ') + "\"a\":1}");
  EXPECT_REJECTS(s, R"( {"a":1})");  // nothing before the value
  EXPECT_REJECTS(s, R"({"a":1} )");  // nor after
  EXPECT_TRUE(matches(JsonGrammar::from_schema_text(s, {.max_indent = 40}),
                      "{\n" + std::string(40, ' ') + "\"a\":1}"));
}

TEST(JsonSchema, Patterns) {
  auto p = [](const std::string& pattern) {
    return R"({"type":"string","pattern":)" + ojson(pattern).dump() + "}";
  };
  EXPECT_ACCEPTS(p("^[a-z]+$"), R"("abc")");
  EXPECT_REJECTS(p("^[a-z]+$"), R"("")");
  EXPECT_REJECTS(p("^[a-z]+$"), R"("abC")");
  EXPECT_ACCEPTS(p("^\\d{3}-\\d{4}$"), R"("555-1234")");
  EXPECT_REJECTS(p("^\\d{3}-\\d{4}$"), R"("55-1234")");
  EXPECT_ACCEPTS(p("^(abc|de)+x?$"), R"("abcdeabc")");
  EXPECT_ACCEPTS(p("^(abc|de)+x?$"), R"("dex")");
  EXPECT_REJECTS(p("^(abc|de)+x?$"), R"("abcd")");
  EXPECT_ACCEPTS(p("^a{2,3}$"), R"("aaa")");
  EXPECT_REJECTS(p("^a{2,3}$"), R"("aaaa")");
  EXPECT_ACCEPTS(p("^a{2,}$"), R"("aaaaaaa")");
  EXPECT_ACCEPTS(p("^[^0-9]*$"), "\"x\xC3\xA9!\"");
  EXPECT_REJECTS(p("^[^0-9]*$"), R"("x1")");
  EXPECT_ACCEPTS(p("^.$"), "\"\xF0\x9F\x98\x80\"");  // '.' is one code point
  EXPECT_REJECTS(p("^.$"), R"("\n")");
  // Unanchored: a search.
  EXPECT_ACCEPTS(p("ab"), R"("xxabyy")");
  EXPECT_REJECTS(p("ab"), R"("xxayy")");
  EXPECT_ACCEPTS(p("^ab"), R"("abyy")");
  EXPECT_REJECTS(p("^ab"), R"("xab")");
  EXPECT_ACCEPTS(p("^a|b$"), R"("ax")");
  EXPECT_ACCEPTS(p("^a|b$"), R"("xb")");
  EXPECT_REJECTS(p("^a|b$"), R"("xa")");
  // Characters that JSON escapes appear escaped.
  EXPECT_ACCEPTS(p("^a\"b\\\\c$"), R"("a\"b\\c")");
  EXPECT_ACCEPTS(p("^a\\nb$"), R"("a\nb")");
  EXPECT_ACCEPTS(p("^\\u00e9\\.$"), "\"\xC3\xA9.\"");
  for (const char* bad :
       {"(?=a)", "(a)\\1", "a^b", "\\bword", "(?i)abc", "a**", "(a*)*", "[[:alpha:]]"}) {
    auto e = unsupported(p(bad));
    EXPECT_EQ(e.keyword(), "pattern") << bad;
    EXPECT_EQ(e.path(), "#/pattern") << bad;
  }
}

// Random patterns and random schema objects: each either compiles (and the
// matcher runs on some input) or is an UnsupportedSchema; never anything else.
TEST(JsonSchema, RandomPatternsAndSchemasCompileOrAreUnsupported) {
  std::mt19937 rng(11);
  const std::string alphabet = "ab.^$|()[]{}?*+-\\dws0123,:\"\xC3\xA9";
  int compiled = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string pattern;
    for (size_t n = rng() % 10; n > 0; --n) pattern += alphabet[rng() % alphabet.size()];
    ojson schema = {{"type", "string"}, {"pattern", pattern}};
    try {
      GrammarMatcher m(JsonGrammar::from_schema(schema));
      (void)m.accept_bytes("\"ab\"");
      ++compiled;
    } catch (const UnsupportedSchema&) {
    } catch (const UnsatisfiableSchema&) {
    } catch (const nlohmann::json::exception&) {
      // invalid UTF-8 from the random bytes cannot even be put in a schema
    }
  }
  EXPECT_GT(compiled, 300);
  const std::vector<ojson> pieces = {ojson("string"),
                                     ojson(1),
                                     ojson(-1),
                                     ojson(true),
                                     ojson(nullptr),
                                     ojson::array(),
                                     ojson::object(),
                                     ojson({"a", 1}),
                                     ojson({{"type", "integer"}}),
                                     ojson("#"),
                                     ojson("#/properties"),
                                     ojson({{"$ref", "#"}})};
  const std::vector<std::string> keys = {
      "type",        "properties", "items",     "required", "enum",   "anyOf",
      "$ref",        "minItems",   "maxLength", "const",    "format", "additionalProperties",
      "prefixItems", "minimum"};
  for (int i = 0; i < 3000; ++i) {
    ojson schema = ojson::object();
    for (size_t n = 1 + rng() % 3; n > 0; --n) {
      ojson v = pieces[rng() % pieces.size()];
      if (rng() % 3 == 0) v = ojson{{keys[rng() % keys.size()], v}};
      schema[keys[rng() % keys.size()]] = v;
    }
    try {
      GrammarMatcher m(JsonGrammar::from_schema(schema));
      (void)m.accept_bytes("{\"a\":[1]}");
    } catch (const UnsupportedSchema&) {
    } catch (const UnsatisfiableSchema&) {
    }
  }
}

TEST(JsonSchema, Formats) {
  const std::string date = R"({"type":"string","format":"date"})";
  for (const char* ok : {"2024-02-29", "2000-02-29", "2023-02-28", "2023-12-31", "0001-01-01",
                         "2023-04-30", "1996-02-29"}) {
    EXPECT_ACCEPTS(date, std::string("\"") + ok + "\"");
  }
  for (const char* bad : {"2023-02-29", "1900-02-29", "2023-04-31", "2023-13-01", "2023-00-10",
                          "2023-01-00", "0000-01-01", "2023-1-01", "20230101", "2023-01-01T"}) {
    EXPECT_REJECTS(date, std::string("\"") + bad + "\"");
  }
  const std::string dt = R"({"type":"string","format":"date-time"})";
  EXPECT_ACCEPTS(dt, R"("2023-05-01T12:30:00Z")");
  EXPECT_ACCEPTS(dt, R"("2023-05-01T23:59:59.123+05:30")");
  EXPECT_REJECTS(dt, R"("2023-05-01T24:00:00Z")");
  EXPECT_REJECTS(dt, R"("2023-05-01 12:30:00Z")");
  EXPECT_REJECTS(dt, R"("2023-05-01T12:30:00")");  // an offset is required
  const std::string uuid = R"({"type":"string","format":"uuid"})";
  EXPECT_ACCEPTS(uuid, R"("123e4567-e89b-12d3-a456-426614174000")");
  EXPECT_REJECTS(uuid, R"("123e4567e89b12d3a456426614174000")");
  EXPECT_REJECTS(uuid, R"("123e4567-e89b-12d3-a456-42661417400g")");
  EXPECT_ACCEPTS(R"({"type":"string","format":"time"})", R"("08:15:00-03:00")");
  EXPECT_EQ(unsupported(R"({"type":"string","format":"uri"})").keyword(), "format");
  const std::string email = R"({"type":"string","format":"email"})";
  EXPECT_ACCEPTS(email, R"("ada.lovelace+x@example.co.uk")");
  EXPECT_REJECTS(email, R"("ada@localhost")");
  EXPECT_REJECTS(email, R"("no-at.example.com")");
  const std::string ipv4 = R"({"type":"string","format":"ipv4"})";
  EXPECT_ACCEPTS(ipv4, R"("192.168.0.255")");
  EXPECT_REJECTS(ipv4, R"("192.168.0.256")");
  EXPECT_REJECTS(ipv4, R"("01.2.3.4")");
  EXPECT_REJECTS(ipv4, R"("1.2.3")");
}

TEST(JsonSchema, UnsupportedKeywordsAreNamed) {
  auto e =
      unsupported(R"({"type":"object","properties":{"age":{"type":"integer","multipleOf":2}}})");
  EXPECT_EQ(e.keyword(), "multipleOf");
  EXPECT_EQ(e.path(), "#/properties/age/multipleOf");
  EXPECT_NE(std::string(e.what()).find("multipleOf"), std::string::npos);
  EXPECT_EQ(unsupported(R"({"allOf":[{"type":"integer"},{"type":"number"}]})").keyword(), "allOf");
  EXPECT_EQ(unsupported(R"({"type":"object","patternProperties":{}})").keyword(),
            "patternProperties");
  EXPECT_EQ(unsupported(R"({"type":"strin"})").keyword(), "type");
  EXPECT_EQ(unsupported(R"({"if":{},"then":{}})").keyword(), "if");
  EXPECT_EQ(unsupported(R"({"type":"integer","anyOf":[{"const":1}]})").keyword(), "type");
  EXPECT_EQ(unsupported(R"({"enum":[1],"minLength":1})").keyword(), "minLength");
  EXPECT_THROW(compile("{not json"), UnsupportedSchema);
  // Annotations are ignored by design.
  EXPECT_ACCEPTS(R"({"title":"T","description":"d","$schema":"x","$id":"y","$comment":"c",
      "default":1,"examples":[1],"deprecated":false,"readOnly":true,"writeOnly":false,
      "type":"integer"})",
                 "1");
}

TEST(JsonSchema, PropertyOrderFollowsTheJsonObjectOrder) {
  const std::string text =
      R"({"type":"object","properties":{"b":{"type":"integer"},"a":{"type":"integer"}},
          "required":["a","b"]})";
  EXPECT_ACCEPTS(text, R"({"b":1,"a":2})");  // text and ordered_json: schema order
  EXPECT_TRUE(matches(JsonGrammar::from_schema(ojson::parse(text)), R"({"b":1,"a":2})"));
  // nlohmann::json keeps keys sorted, so its order is alphabetical.
  auto sorted = JsonGrammar::from_schema(nlohmann::json::parse(text));
  EXPECT_TRUE(matches(sorted, R"({"a":2,"b":1})"));
  EXPECT_FALSE(matches(sorted, R"({"b":1,"a":2})"));
}

TEST(JsonText, NestingDepthSkipsStrings) {
  EXPECT_EQ(kiln::json_nesting_depth(""), 0u);
  EXPECT_EQ(kiln::json_nesting_depth("1"), 0u);
  EXPECT_EQ(kiln::json_nesting_depth(R"({"a": [1, {"b": []}]})"), 4u);
  EXPECT_EQ(kiln::json_nesting_depth(R"(["[[[", "\"[[", {}])"), 2u);  // escaped quote
  EXPECT_EQ(kiln::json_nesting_depth(R"(["\\", [[]]])"), 3u);         // escaped backslash
  EXPECT_EQ(kiln::json_nesting_depth("]]]]["), 1u);                   // invalid: the parser's job
}

// A schema nested deeper than any real one is refused before it is parsed (its copies and
// its compilation recurse once per level: 50,000 levels overflowed the stack).
TEST(JsonSchema, DeeplyNestedSchemaTextIsRefused) {
  std::string deep;
  for (int i = 0; i < 50000; ++i) deep += R"({"type": "array", "items": )";
  deep += R"({"type": "integer"})" + std::string(50000, '}');
  try {
    compile(deep);
    ADD_FAILURE() << "compiled";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("deeper than 512 levels"), std::string::npos);
  }
  std::string ok;
  for (int i = 0; i < 100; ++i) ok += R"({"type": "array", "items": )";
  ok += R"({"type": "integer"})" + std::string(100, '}');
  EXPECT_ACCEPTS(ok, std::string(100, '[') + "1" + std::string(100, ']'));
}

// A schema no document satisfies is refused when compiled (a request with it could never
// finish: the server used to fail mid-generation with "the grammar allows no next token").
TEST(JsonSchema, UnsatisfiableSchemasAreRefused) {
  for (const char* schema :
       {R"({"enum": []})", "false", R"({"type": "string", "minLength": 5, "maxLength": 2})",
        R"({"type": "integer", "minimum": 5, "maximum": 2})",
        R"({"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]})",
        R"({"type": "array", "items": false, "minItems": 1})"}) {
    try {
      compile(schema);
      ADD_FAILURE() << "compiled: " << schema;
    } catch (const UnsatisfiableSchema&) {
    }
  }
}

// A part of a schema that allows nothing is cut out of the grammar, so the matcher never
// lets the model start it: every prefix it accepts can still be completed.
TEST(JsonSchema, BranchesThatAllowNothingAreNeverStarted) {
  const auto g =
      compile(R"({"type": "object", "properties": {"a": {"enum": []}, "b": {"type": "integer"}}})");
  EXPECT_TRUE(matches(g, R"({"b": 1})"));
  EXPECT_TRUE(matches(g, "{}"));
  GrammarMatcher m(g);
  EXPECT_TRUE(m.accept_bytes("{\""));
  EXPECT_FALSE(m.can_accept("a")) << "key \"a\" has no possible value";
  EXPECT_TRUE(m.can_accept("b"));
  const auto items = compile(R"({"type": "array", "items": false})");
  EXPECT_TRUE(matches(items, "[]"));
  GrammarMatcher arr(items);
  EXPECT_TRUE(arr.accept_bytes("["));
  EXPECT_FALSE(arr.can_accept("1"));
  EXPECT_FALSE(arr.can_accept(" 1"));
}

TEST(JsonSchema, JsonObjectMode) {
  auto g = JsonGrammar::any_object();
  EXPECT_TRUE(matches(g, R"({})"));
  EXPECT_TRUE(matches(g, R"({"a":[1,2,{"b":null}],"c":"d"})"));
  EXPECT_FALSE(matches(g, R"([1])"));
  EXPECT_FALSE(matches(g, R"("s")"));
  EXPECT_FALSE(matches(g, R"({"a":1)"));
  GrammarMatcher m(g);
  EXPECT_TRUE(m.accept_bytes(R"({"a":1})"));
  EXPECT_TRUE(m.is_final());  // nothing may follow the closing brace
}

// ---------------------------------------------------------------------------
// Property test: an independent generator writes random documents that a
// schema allows (in the serialisation the grammar promises to accept); each
// must be accepted byte by byte, and stay a valid JSON prefix all along.

class DocGenerator {
 public:
  DocGenerator(const ojson& root, uint32_t seed) : root_(root), rng_(seed) {}

  std::string generate() { return gen(root_, 0); }

 private:
  int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }

  std::string ws() {
    switch (pick(4)) {
      case 0:
        return " ";
      case 1:
        return std::string(1, '\n').append(static_cast<size_t>(pick(5)), ' ');
      default:
        return "";
    }
  }

  std::string gen_char() {
    static const std::vector<std::string> kChars = {"a",
                                                    "Z",
                                                    "0",
                                                    " ",
                                                    "\\n",
                                                    "\\\"",
                                                    "\\\\",
                                                    "\\/",
                                                    "\\u00e9",
                                                    "\\uD83D\\uDE00",
                                                    "\xC3\xA9",
                                                    "\xE6\x97\xA5",
                                                    "\xF0\x9F\x98\x80",
                                                    "~",
                                                    "{",
                                                    "}",
                                                    "\\t",
                                                    "\x7F"};
    return kChars[pick(static_cast<int>(kChars.size()))];
  }

  std::string gen_string(int min, int max) {
    const int hi = max < 0 ? min + 6 : std::min(max, min + 6);
    const int n = min + pick(hi - min + 1);
    std::string s = "\"";
    for (int i = 0; i < n; ++i) s += gen_char();
    return s + "\"";
  }

  std::string gen_number(bool integer) {
    std::string s = pick(2) ? "-" : "";
    s += pick(3) == 0 ? "0" : std::to_string(1 + pick(100000));
    if (!integer) {
      if (pick(2)) s += "." + std::to_string(pick(1000));
      if (pick(3) == 0)
        s += std::string(pick(2) ? "e" : "E") + (pick(2) ? "-" : "+") + std::to_string(pick(30));
    }
    return s;
  }

  std::string gen_any(int depth) {
    int k = pick(depth > 3 ? 5 : 7);
    switch (k) {
      case 0:
        return "null";
      case 1:
        return pick(2) ? "true" : "false";
      case 2:
        return gen_number(false);
      case 3:
        return gen_string(0, 4);
      case 4:
        return gen_number(true);
      case 5: {
        std::string s = "[" + ws();
        int n = pick(3);
        for (int i = 0; i < n; ++i) s += (i ? ws() + "," + ws() : "") + gen_any(depth + 1);
        return s + ws() + "]";
      }
      default: {
        std::string s = "{" + ws();
        int n = pick(3);
        for (int i = 0; i < n; ++i) {
          s += (i ? ws() + "," + ws() : "") + gen_string(0, 3) + ws() + ":" + ws() +
               gen_any(depth + 1);
        }
        return s + ws() + "}";
      }
    }
  }

  std::string gen(const ojson& s, int depth) {
    if (s.is_boolean()) return gen_any(depth);
    if (s.contains("$ref")) {
      return gen(root_.at(ojson::json_pointer(s["$ref"].get<std::string>().substr(1))), depth);
    }
    if (s.contains("const")) return s["const"].dump();
    if (s.contains("enum")) return s["enum"][pick(static_cast<int>(s["enum"].size()))].dump();
    if (s.contains("anyOf")) {
      // Deep recursion: prefer the last alternative (the base case by convention here).
      const auto& alts = s["anyOf"];
      int i = depth > 4 ? static_cast<int>(alts.size()) - 1 : pick(static_cast<int>(alts.size()));
      return gen(alts[i], depth + 1);
    }
    std::string type;
    if (s.contains("type")) {
      type = s["type"].is_array()
                 ? s["type"][pick(static_cast<int>(s["type"].size()))].get<std::string>()
                 : s["type"].get<std::string>();
    }
    if (type.empty()) return gen_any(depth);
    if (type == "null") return "null";
    if (type == "boolean") return pick(2) ? "true" : "false";
    if (type == "integer") return gen_number(true);
    if (type == "number") return gen_number(false);
    if (type == "string") {
      return gen_string(s.value("minLength", 0), s.value("maxLength", -1));
    }
    if (type == "array") {
      int min = s.value("minItems", 0), max = s.value("maxItems", -1);
      int n = min + pick(depth > 3 ? 1 : 4);
      if (max >= 0) n = std::min(n, max);
      std::string out = "[" + ws();
      for (int i = 0; i < n; ++i) {
        out += (i ? ws() + "," + ws() : "") +
               gen(s.contains("items") ? s["items"] : ojson(true), depth + 1);
      }
      return out + ws() + "]";
    }
    // object: schema order, optional ones sometimes skipped.
    std::set<std::string> required;
    if (s.contains("required")) {
      for (const auto& r : s["required"]) required.insert(r.get<std::string>());
    }
    std::string out = "{" + ws();
    bool first = true;
    if (s.contains("properties")) {
      for (const auto& [name, sub] : s["properties"].items()) {
        if (!required.contains(name) && (pick(2) || depth > 4)) continue;
        out += (first ? "" : ws() + "," + ws()) + ojson(name).dump() + ws() + ":" + ws() +
               gen(sub, depth + 1);
        first = false;
      }
    }
    return out + ws() + "}";
  }

  const ojson& root_;
  std::mt19937 rng_;
};

TEST(JsonSchema, RandomDocumentsFromSchemaAreAccepted) {
  const std::vector<std::string> schemas = {
      R"({"type":"object","properties":{"name":{"type":"string","maxLength":8},
          "age":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"},"maxItems":4},
          "kind":{"enum":["a","b",null]},"score":{"type":["number","null"]}},
          "required":["name"]})",
      R"({"type":"array","items":{"type":"object","properties":{"x":{"type":"number"},
          "y":{"type":"number"},"ok":{"type":"boolean"}},"required":["x","y"]},"minItems":1})",
      R"({"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},
          "kids":{"type":"array","items":{"$ref":"#/$defs/node"}}},"required":["v"]}},
          "$ref":"#/$defs/node"})",
      R"({"type":"object","properties":{"payload":{},"meta":{"type":"object"},
          "choice":{"anyOf":[{"type":"string","minLength":2,"maxLength":5},{"type":"integer"}]}},
          "required":["payload","meta","choice"]})",
  };
  for (const auto& text : schemas) {
    const ojson schema = ojson::parse(text);
    auto g = JsonGrammar::from_schema(schema);
    for (uint32_t seed = 0; seed < 150; ++seed) {
      std::string doc = DocGenerator(schema, seed).generate();
      ASSERT_TRUE(ojson::accept(doc)) << doc;  // the generator itself is sound
      GrammarMatcher m(g);
      for (size_t i = 0; i < doc.size(); ++i) {
        ASSERT_TRUE(m.accept_byte(static_cast<uint8_t>(doc[i])))
            << "schema " << text << "\nrejected byte " << i << " of " << doc;
      }
      EXPECT_TRUE(m.is_complete()) << doc;
    }
  }
}

// Random byte edits of valid documents: whatever the grammar still accepts as
// complete must at least be valid JSON (nlohmann is the independent judge).
TEST(JsonSchema, MutatedDocumentsThatAreAcceptedAreValidJson) {
  auto g = JsonGrammar::any_value();
  std::mt19937 rng(7);
  const std::string alphabet = "{}[],:\" \n\\u0aE.-+etrufalsn\x01\xC3\xA9\xFF";
  const ojson any_schema = ojson::parse(R"({})");
  int accepted = 0;
  for (uint32_t seed = 0; seed < 400; ++seed) {
    std::string doc = DocGenerator(any_schema, seed).generate();
    for (int edits = 0; edits < 2 && !doc.empty(); ++edits) {
      size_t pos = rng() % doc.size();
      char c = alphabet[rng() % alphabet.size()];
      switch (rng() % 3) {
        case 0:
          doc[pos] = c;
          break;
        case 1:
          doc.insert(doc.begin() + static_cast<long>(pos), c);
          break;
        default:
          doc.erase(pos, 1);
      }
    }
    if (matches(g, doc)) {
      ++accepted;
      EXPECT_TRUE(ojson::accept(doc)) << doc;
    }
  }
  EXPECT_GT(accepted, 10);
}

}  // namespace
}  // namespace kiln
