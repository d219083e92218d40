// JSON text from outside (request bodies, files named on the command line) is checked for
// nesting before it is parsed. nlohmann's parser itself is iterative, but copying, dumping
// or comparing a value recurses once per level, so a body of a few hundred KB nested
// 100,000 deep would overflow the stack later, wherever the value is first copied (a
// server thread's segfault). Rejecting such text up front is simpler than making every
// later use iterative.
#pragma once

#include <cstddef>
#include <string_view>

namespace kiln {

// Deepest nesting of arrays and objects accepted in JSON text from outside: far beyond any
// real request or schema, far below what the recursive operations can take.
inline constexpr size_t kMaxJsonNesting = 512;

// The deepest nesting of arrays and objects in `text`; brackets inside strings (escapes
// included) do not count. Text that is not valid JSON gives some depth: the parser that
// follows reports its errors.
inline size_t json_nesting_depth(std::string_view text) {
  size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > deepest) deepest = depth;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

}  // namespace kiln
