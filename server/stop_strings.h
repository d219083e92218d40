// Stop strings over streamed text without partial leaks.
//
// Generated text arrives in pieces; a stop string may straddle pieces. The
// matcher releases only text that cannot be the start of a stop string: the
// longest tail that is a proper prefix of some stop string is held back until
// the next piece decides it. When a stop string completes, the text before it
// is released and everything from it on is dropped. With several stop strings
// the one that completes first wins (ties: the one that starts first).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kiln::server {

class StopStringMatcher {
 public:
  // Empty strings are ignored (they would match everywhere).
  explicit StopStringMatcher(std::vector<std::string> stops);

  struct Result {
    std::string text;      // safe to emit now
    bool stopped = false;  // a stop string was found; generation ends
  };
  Result push(std::string_view piece);
  // Generation ended another way: whatever was held back is plain text.
  std::string flush();

  bool empty() const { return stops_.empty(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;
};

}  // namespace kiln::server
