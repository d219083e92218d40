// Stop strings against a reference that sees the whole text at once: the
// released text must always be a prefix of the final answer (no partial
// leak), and the final answer is the text before the first stop string.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "server/stop_strings.h"

namespace {

using kiln::server::StopStringMatcher;

struct Outcome {
  std::string text;
  bool stopped = false;
};

Outcome run(const std::vector<std::string>& stops, const std::vector<std::string>& pieces,
            const std::string& expected_final) {
  StopStringMatcher m(stops);
  Outcome o;
  for (const auto& p : pieces) {
    auto r = m.push(p);
    o.text += r.text;
    // No leak: whatever was released must be where the final text begins.
    EXPECT_EQ(expected_final.compare(0, o.text.size(), o.text), 0)
        << "released '" << o.text << "' but the answer is '" << expected_final << "'";
    if (r.stopped) {
      o.stopped = true;
      return o;
    }
  }
  o.text += m.flush();
  return o;
}

// Reference: grow the text one byte at a time; the first prefix that ends
// with a stop string decides (the longest such stop on a tie: it starts first).
Outcome reference(const std::vector<std::string>& stops, const std::string& text) {
  for (size_t end = 1; end <= text.size(); ++end) {
    const std::string_view prefix(text.data(), end);
    size_t best = 0;
    for (const auto& s : stops) {
      if (!s.empty() && prefix.ends_with(s)) best = std::max(best, s.size());
    }
    if (best > 0) return {text.substr(0, end - best), true};
  }
  return {text, false};
}

TEST(StopStrings, StopSplitAcrossPieces) {
  const auto o = run({"<end>"}, {"Hello <e", "n", "d> tail"}, "Hello ");
  EXPECT_TRUE(o.stopped);
  EXPECT_EQ(o.text, "Hello ");
}

TEST(StopStrings, FalseStartIsReleased) {
  const auto o = run({"<end>"}, {"a <e", "nx", " b"}, "a <enx b");
  EXPECT_FALSE(o.stopped);
  EXPECT_EQ(o.text, "a <enx b");
}

TEST(StopStrings, HeldTailIsFlushedAtTheEnd) {
  const auto o = run({"STOP"}, {"abc ST"}, "abc ST");
  EXPECT_FALSE(o.stopped);
  EXPECT_EQ(o.text, "abc ST");
}

TEST(StopStrings, NoStopsPassesThrough) {
  StopStringMatcher m({});
  EXPECT_EQ(m.push("abc").text, "abc");
  EXPECT_TRUE(m.empty());
  StopStringMatcher only_empty({""});
  EXPECT_TRUE(only_empty.empty());
}

TEST(StopStrings, FirstToCompleteWins) {
  // "xy" completes before "yz"; "b" before "abc" whatever the split.
  auto o = run({"yz", "xy"}, {"abxyz"}, "ab");
  EXPECT_TRUE(o.stopped);
  EXPECT_EQ(o.text, "ab");
  o = run({"abc", "b"}, {"xabc"}, "xa");
  EXPECT_EQ(o.text, "xa");
  o = run({"abc", "b"}, {"xa", "bc"}, "xa");
  EXPECT_EQ(o.text, "xa");
}

TEST(StopStrings, RandomAgainstReference) {
  std::mt19937 rng(5);
  const std::string alphabet = "ab\n";
  for (int iter = 0; iter < 3000; ++iter) {
    std::string text;
    const size_t len = rng() % 40;
    for (size_t i = 0; i < len; ++i) text += alphabet[rng() % alphabet.size()];
    std::vector<std::string> stops;
    const size_t n_stops = 1 + rng() % 3;
    for (size_t k = 0; k < n_stops; ++k) {
      std::string s;
      const size_t sl = 1 + rng() % 4;
      for (size_t i = 0; i < sl; ++i) s += alphabet[rng() % alphabet.size()];
      stops.push_back(s);
    }
    std::vector<std::string> pieces;
    for (size_t i = 0; i < text.size();) {
      const size_t pl = std::min(text.size() - i, size_t(1 + rng() % 5));
      pieces.push_back(text.substr(i, pl));
      i += pl;
    }
    const Outcome want = reference(stops, text);
    const Outcome got = run(stops, pieces, want.text);
    ASSERT_EQ(got.text, want.text) << "iteration " << iter;
    ASSERT_EQ(got.stopped, want.stopped) << "iteration " << iter;
  }
}

}  // namespace
