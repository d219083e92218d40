// JSON Schema -> byte grammar (grammar.h) for constrained generation.
//
// Supported subset (anything else is an UnsupportedSchema naming the keyword;
// nothing is ignored silently):
//   type (object, array, string, number, integer, boolean, null, and arrays of
//   these), properties, required, additionalProperties (false, true, schema),
//   enum, const, items (schema, false, or the draft-7 array form),
//   prefixItems, additionalItems, minItems, maxItems, anyOf, oneOf, allOf with
//   one subschema, $ref (local "#..." pointers, recursion allowed) with $defs /
//   definitions, minLength, maxLength, pattern (subset below), format (date,
//   time, date-time, uuid, email (a conservative ASCII subset), ipv4); minimum / maximum /
//   exclusiveMinimum / exclusiveMaximum on integers (any bounds up to 1e17, compiled to digit
//   ranges), and on numbers only "minimum": 0.
// Ignored by design (annotations that do not constrain the value): title,
//   description, $schema, $id, $comment, default, examples, deprecated,
//   readOnly, writeOnly, discriminator (OpenAPI's hint beside oneOf).
//
// Choices where JSON Schema leaves room (the generated documents are always
// valid; the grammar accepts a subset of the valid serialisations):
// - Properties come in schema order; optional ones may be skipped. Extra
//   properties (when allowed) come after the declared ones, with names that
//   differ from every declared name.
// - additionalProperties absent: no extra properties when `properties` is
//   given (what OpenAI strict mode means), any properties when it is not.
// - A `required` name missing from `properties` is declared with schema true.
// - items absent: any values. integer: no fraction or exponent (no "1.0").
//   Non-negative numbers ("minimum": 0) are written without a minus sign.
// - oneOf compiles like anyOf, and is accepted only where its branches are
//   provably disjoint, so a value can never match two: no common JSON type
//   (integer counts as number), const/enum values that cannot validate
//   against the other branch, or objects with a property one branch requires
//   whose schemas are disjoint in the two (a discriminator: "kind": {"const":
//   "a"} vs {"const": "b"}, or a name the other forbids with
//   additionalProperties: false). Anything else is an UnsupportedSchema
//   naming oneOf (anyOf takes such branches).
// - enum/const: the values' compact serialisation; a sibling `type` filters
//   the values (and const + enum together: the values in both); other
//   siblings are rejected.
// - Whitespace: between tokens at most one space, or a newline followed by up
//   to JsonGrammarOptions::max_indent spaces/tabs; none before or after the
//   top-level value. So a model cannot pad forever.
// - Strings: raw UTF-8 (validated: no overlongs, no surrogates) and every JSON
//   escape; \uXXXX surrogates must come in high-low pairs. Control characters
//   only escaped. Lengths count code points (an escape is one).
// - pattern: ECMA-262 subset. Literals (UTF-8), '.', classes [a-z], [^...],
//   \d \w \s \D \W \S (ASCII meanings), escapes \n \t \r \f \v \0 \xHH \uHHHH
//   and escaped punctuation, groups (...) and (?:...), alternation |,
//   quantifiers ? * + {n} {n,} {n,m} (lazy forms too, same language).
//   ^ and $ only at the start / end of a top-level alternative; an unanchored
//   side matches any text there (JSON Schema patterns are searches). Not
//   supported: backreferences, lookaround, \b, flags, (?i). In pattern
//   strings, characters that need escaping in JSON (" \ and controls) are
//   produced only in their short escaped form, others only raw.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>

#include "sampler/grammar.h"

namespace kiln {

// A schema keyword (or keyword value) we do not support. `keyword` is the
// keyword's name ("minimum", "format", "pattern", ...), `path` a JSON pointer
// to where it was found ("#/properties/age/minimum").
class UnsupportedSchema : public std::invalid_argument {
 public:
  UnsupportedSchema(std::string keyword, std::string path, const std::string& detail);
  const std::string& keyword() const { return keyword_; }
  const std::string& path() const { return path_; }

 private:
  std::string keyword_;
  std::string path_;
};

// A schema that no JSON document satisfies (enum [], false, minimum > maximum, a required
// property that allows nothing, ...): a request with it could never finish.
class UnsatisfiableSchema : public std::invalid_argument {
 public:
  UnsatisfiableSchema() : std::invalid_argument("no JSON document satisfies this schema") {}
};

struct JsonGrammarOptions {
  int max_indent = 20;  // spaces/tabs allowed after a newline between tokens
};

struct JsonGrammar {
  // Property order follows the object's order, so pass an ordered_json (or
  // the text) when the order matters; the nlohmann::json overload sees the
  // properties sorted by name.
  static std::shared_ptr<const Grammar> from_schema(const nlohmann::ordered_json& schema,
                                                    const JsonGrammarOptions& options = {});
  static std::shared_ptr<const Grammar> from_schema(const nlohmann::json& schema,
                                                    const JsonGrammarOptions& options = {});
  // Parses the schema text (throws UnsupportedSchema with keyword "" on a
  // syntax error), keeping property order.
  static std::shared_ptr<const Grammar> from_schema_text(std::string_view schema_text,
                                                         const JsonGrammarOptions& options = {});
  // response_format json_object: any JSON object.
  static std::shared_ptr<const Grammar> any_object(const JsonGrammarOptions& options = {});
  // Any JSON value.
  static std::shared_ptr<const Grammar> any_value(const JsonGrammarOptions& options = {});
};

}  // namespace kiln
