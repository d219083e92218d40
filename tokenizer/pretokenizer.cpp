// Regex engine choice: PCRE2 (Debian libpcre2-dev) with UTF + UCP and the JIT.
//
// The pre-tokenizer regexes need Unicode categories (\p{L}, \p{N}, \p{P}),
// lookahead and leftmost-first alternation; std::regex has neither the
// categories nor a usable speed. PCRE2 gives the exact regex semantics for
// every `pre` with one engine and the Unicode tables Debian keeps current, so
// all eleven supported pre-tokenizers share one small, obviously correct code
// path. Measured on this machine (bench/tokenizer_bench.cpp, see
// bench/RESULTS.md), the JIT-compiled split runs at ~80-95 MiB/s and is ~25%
// of encode time (22-37 MiB/s end to end; llama.cpp: 1.2-1.6), so a
// hand-written matcher per pattern (llama.cpp's approach for gpt2/llama3)
// would gain at most that 25% and cost one bespoke state machine per
// pattern, each a chance to diverge from the regex.
//
// Two deliberate adaptations so PCRE2 classifies characters as llama.cpp does:
//   * \s becomes [\t-\r\x{85}\p{Z}]: llama.cpp's whitespace set is the Unicode
//     White_Space property, which PCRE2 10.42's \s lacks U+0085 from.
//   * $ becomes \z: llama.cpp uses ECMAScript regexes, where $ only matches at
//     the very end; in PCRE2 it would also match before a final newline.
#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdexcept>
#include <string>

namespace kiln {

namespace {

constexpr std::string_view kWhitespaceClassBody = R"(\t-\r\x{85}\p{Z})";

// Rewrites \s, \S and $ of an ECMAScript-style pattern into PCRE2 (see above).
std::string to_pcre2(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      ++i;
      if (e == 's') {
        if (in_class) {
          out += kWhitespaceClassBody;
        } else {
          out += '[';
          out += kWhitespaceClassBody;
          out += ']';
        }
      } else if (e == 'S' && !in_class) {
        out += "[^";
        out += kWhitespaceClassBody;
        out += ']';
      } else {
        out += '\\';
        out += e;
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
    } else if (c == ']' && in_class) {
      in_class = false;
    } else if (c == '$' && !in_class) {
      out += "\\z";
      continue;
    }
    out += c;
  }
  return out;
}

// The regex lists, by pre-tokenizer family (facts from llama.cpp's
// llama-vocab.cpp; they in turn come from each model's tokenizer.json).
constexpr std::string_view kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr std::string_view kContractionsAnyCase =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]))";
const std::string kLlama3 = std::string(kContractionsAnyCase) +
                            R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
                            R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";
const std::string kQwen2 = std::string(kContractionsAnyCase) +
                           R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
                           R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Cased letters (Lu, Ll, Lt and a few more), the deepseek-llm word class.
constexpr std::string_view kDeepseekLetters =
    R"(A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF})"
    R"(\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D})"
    R"(\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5})"
    R"(\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5})"
    R"(\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B})"
    R"(\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D})"
    R"(\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D})"
    R"(\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4})"
    R"(\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC})"
    R"(\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115})"
    R"(\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134})"
    R"(\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184})"
    R"(\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3})"
    R"(\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787})"
    R"(\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17})"
    R"(\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3})"
    R"(\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF})"
    R"(\x{1E900}-\x{1E943})";
// CJK Unified Ideographs, U+0800..U+4E00 and Hangul syllables.
constexpr std::string_view kDeepseekCjk =
    R"([\x{4E00}-\x{9FA5}\x{0800}-\x{4E00}\x{AC00}-\x{D7FF}]+)";

struct PreSpec {
  std::vector<std::string> regexes;
  bool ignore_merges = false;
};

PreSpec spec_for(std::string_view pre) {
  if (pre.empty() || pre == "default") {
    return {{R"([\p{P}\$\+<=>\^~\|]+)", std::string(kGpt2), R"(\p{N}+)", "[0-9][0-9][0-9]"}};
  }
  if (pre == "gpt-2" || pre == "mpt" || pre == "phi-2" || pre == "olmo" || pre == "jais") {
    return {{std::string(kGpt2)}};
  }
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" || pre == "falcon3") {
    return {{kLlama3}, true};
  }
  if (pre == "dbrx" || pre == "smaug-bpe") return {{kLlama3}};
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "command-r" ||
      pre == "codeshell" || pre == "exaone" || pre == "minerva-7b") {
    return {{R"(\p{N})", std::string(kGpt2)}};
  }
  if (pre == "qwen2" || pre == "deepseek-r1-qwen" || pre == "stablelm2" || pre == "megrez") {
    return {{kQwen2}};
  }
  if (pre == "falcon") {
    return {{R"([\p{P}\$\+<=>\^~\|`]+)", std::string(kGpt2), "[0-9][0-9][0-9]"}};
  }
  if (pre == "deepseek-llm") {
    return {{"[\r\n]", "\\s?[" + std::string(kDeepseekLetters) + "]+",
             R"(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+)",
             R"(\s+$)", std::string(kDeepseekCjk), R"(\p{N}+)"}};
  }
  if (pre == "deepseek-coder") {
    return {{"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", std::string(kDeepseekCjk), R"(\p{N})"}};
  }
  std::string list;
  for (auto name : PreTokenizer::supported()) {
    list += list.empty() ? "" : ", ";
    list += name;
  }
  throw std::invalid_argument("unsupported tokenizer.ggml.pre '" + std::string(pre) +
                              "' (supported: " + list + ")");
}

}  // namespace

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  explicit Regex(const std::string& ecma) {
    const std::string pattern = to_pcre2(ecma);
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                         PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      throw std::logic_error("pre-tokenizer regex does not compile at offset " +
                             std::to_string(error_offset) + ": " +
                             reinterpret_cast<const char*>(message) + " in " + pattern);
    }
    // Without the JIT (some platforms) PCRE2 interprets the pattern: slower,
    // same result, so a JIT failure is not an error.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code); }
};

const std::vector<std::string_view>& PreTokenizer::supported() {
  static const std::vector<std::string_view> names = {
      "default",      "gpt-2",         "mpt",
      "phi-2",        "olmo",          "jais",
      "llama-bpe",    "llama3",        "llama-v3",
      "falcon3",      "dbrx",          "smaug-bpe",
      "smollm",       "starcoder",     "refact",
      "command-r",    "codeshell",     "exaone",
      "minerva-7b",   "qwen2",         "deepseek-r1-qwen",
      "stablelm2",    "megrez",        "falcon",
      "deepseek-llm", "deepseek-coder"};
  return names;
}

PreTokenizer PreTokenizer::for_pre(std::string_view pre) {
  PreSpec spec = spec_for(pre);
  PreTokenizer p;
  p.name_ = pre.empty() ? "default" : std::string(pre);
  p.ignore_merges_ = spec.ignore_merges;
  for (const auto& r : spec.regexes) p.regexes_.push_back(std::make_unique<Regex>(r));
  return p;
}

PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;
PreTokenizer::~PreTokenizer() = default;

namespace {

struct MatchDataDeleter {
  void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
};

// Splits one word with one regex: matches and the gaps between them.
void split_word(const pcre2_code* code, pcre2_match_data* md, std::string_view word,
                std::vector<std::string_view>& out) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(word.data());
  size_t start = 0;
  size_t gap_start = 0;
  while (start < word.size()) {
    // NO_UTF_CHECK: the text went through sanitize_utf8, and a check on every
    // call would rescan the rest of the subject (quadratic on long text).
    const int rc = pcre2_match(code, subject, word.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      throw std::runtime_error(std::string("pre-tokenizer regex failed: ") +
                               reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t match_begin = ov[0];
    const size_t match_end = ov[1];
    if (match_end == match_begin) {
      // An empty match makes no word; step over one character.
      start = match_begin + 1;
      while (start < word.size() && (static_cast<unsigned char>(word[start]) & 0xC0) == 0x80) {
        ++start;
      }
      continue;
    }
    if (match_begin > gap_start) out.push_back(word.substr(gap_start, match_begin - gap_start));
    out.push_back(word.substr(match_begin, match_end - match_begin));
    gap_start = start = match_end;
  }
  if (gap_start < word.size()) out.push_back(word.substr(gap_start));
}

}  // namespace

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& words) const {
  if (text.empty()) return;
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(pcre2_match_data_create(1, nullptr));
  if (!md) throw std::bad_alloc();
  // An encoded surrogate (ED A0..BF xx, left in by sanitize_utf8 as llama.cpp
  // leaves it) is invalid UTF-8 to PCRE2; llama.cpp's splitter makes such a
  // character, which has no Unicode category, a word of its own. So do we,
  // and the regexes only ever see the valid runs between.
  size_t run_start = 0;
  for (size_t pos = text.find('\xED'); pos != std::string_view::npos;
       pos = text.find('\xED', pos)) {
    const bool surrogate = pos + 2 < text.size() &&
                           (static_cast<unsigned char>(text[pos + 1]) & 0xE0) == 0xA0 &&
                           (static_cast<unsigned char>(text[pos + 2]) & 0xC0) == 0x80;
    if (!surrogate) {
      ++pos;
      continue;
    }
    split_run(text.substr(run_start, pos - run_start), md.get(), words);
    words.push_back(text.substr(pos, 3));
    pos += 3;
    run_start = pos;
  }
  split_run(text.substr(run_start), md.get(), words);
}

void PreTokenizer::split_run(std::string_view text, pcre2_match_data_8* md,
                             std::vector<std::string_view>& words) const {
  if (text.empty()) return;
  if (regexes_.size() == 1) {
    split_word(regexes_[0]->code, md, text, words);
    return;
  }
  std::vector<std::string_view> current{text};
  std::vector<std::string_view> next;
  for (const auto& regex : regexes_) {
    next.clear();
    for (std::string_view w : current) split_word(regex->code, md, w, next);
    std::swap(current, next);
  }
  words.insert(words.end(), current.begin(), current.end());
}

}  // namespace kiln
