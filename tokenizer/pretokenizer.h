// Byte-level BPE pre-tokenizer: splits text into words with the regex list
// that tokenizer.ggml.pre names (the same lists llama.cpp uses).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

// PCRE2's match data, declared here so the header needs no pcre2.h.
struct pcre2_real_match_data_8;

namespace kiln {

class PreTokenizer {
 public:
  // Throws std::invalid_argument naming `pre` when it is not supported.
  // An empty `pre` means the key is missing and selects the default list.
  static PreTokenizer for_pre(std::string_view pre);
  // The `pre` values from_pre accepts, for messages and the README.
  static const std::vector<std::string_view>& supported();

  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;
  ~PreTokenizer();

  // Splits `text` (the output of unicode::sanitize_utf8) into words. Each
  // regex of the list is applied in turn inside every word produced so far;
  // both the matches and the unmatched gaps between them become words.
  // The words are views into `text`, appended in order to `words`.
  void split(std::string_view text, std::vector<std::string_view>& words) const;

  // Whether a word that is itself a vocab token skips the merges (llama3).
  bool ignore_merges() const { return ignore_merges_; }
  std::string_view name() const { return name_; }

 private:
  struct Regex;
  PreTokenizer() = default;
  // Splits a run of valid UTF-8.
  void split_run(std::string_view text, pcre2_real_match_data_8* md,
                 std::vector<std::string_view>& words) const;
  std::string name_;
  std::vector<std::unique_ptr<Regex>> regexes_;
  bool ignore_merges_ = false;
};

}  // namespace kiln
