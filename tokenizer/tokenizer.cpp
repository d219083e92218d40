// Tokenizer: vocabulary loading, special-token partitioning, byte-level BPE
// and SentencePiece BPE encoding, decoding.
//
// The behaviour follows llama.cpp's llama-vocab.cpp (read for facts) so that
// our ids equal llama.cpp's on the same GGUF file: the same defaults per
// tokenizer kind, the same special-token text heuristics, the same order of
// special-token matching, the same merge order and byte fallbacks.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <deque>
#include <set>
#include <stdexcept>
#include <unordered_map>

#include "gguf/gguf.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"

namespace kiln {

namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581, SentencePiece's space

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  for (;;) {
    const size_t hit = text.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(text.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(text.substr(pos));
  return out;
}

bool is_ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

// "<0x41>" -> 0x41; -1 when the piece is not of that form.
int parse_byte_piece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9') {
      value |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value |= c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      value |= c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return value;
}

// A run of the input: either text still to tokenize or a matched special token.
struct Fragment {
  bool is_token;
  TokenId token;
  size_t begin, end;  // byte range in the joined text (text fragments)
};

}  // namespace

struct Tokenizer::Impl {
  Kind kind = Kind::BPE;
  std::string model;
  std::string pre;

  std::vector<std::string> pieces;
  std::vector<std::string> bytes;  // what each token decodes to
  std::vector<TokenType> types;
  std::vector<float> scores;
  std::unordered_map<std::string_view, TokenId> piece_to_id;  // views into `pieces`

  TokenId bos = -1, eos = -1;
  std::optional<TokenId> eot, eom, unk, pad, sep;
  std::set<TokenId> eog;
  bool add_bos = false, add_eos = false, add_space_prefix = false;
  // Tokens matched in text before tokenization, longest first.
  std::vector<TokenId> special_tokens;
  // Per token: whitespace before (kLstrip) / after (kRstrip) a matched special
  // token is dropped (llama.cpp sets these by model name; see load()).
  static constexpr uint8_t kLstrip = 1, kRstrip = 2;
  std::vector<uint8_t> strip;

  // Byte-level BPE. Symbols are vocab ids; strings that occur in merges but
  // are no token get ids from vocab_size() up (`extra_symbols`), so merging
  // works on integers and still follows llama.cpp's text-based merges.
  std::optional<PreTokenizer> pre_tokenizer;
  bpe::MergeTable merges;
  std::deque<std::string> extra_symbols;
  std::array<int32_t, 256> byte_symbol{};

  // SentencePiece: the token for each byte (<0xXX>, or the byte itself).
  std::array<TokenId, 256> byte_token{};

  std::optional<TokenId> lookup(std::string_view piece) const {
    const auto it = piece_to_id.find(piece);
    if (it == piece_to_id.end()) return std::nullopt;
    return it->second;
  }

  void check_id(TokenId id) const {
    if (id < 0 || static_cast<size_t>(id) >= pieces.size()) {
      throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                              std::to_string(pieces.size() - 1) + ")");
    }
  }

  void load(const gguf::File& file);
  void load_bpe_merges(const gguf::File& file);
  void detect_special_tokens();

  void partition(std::string_view text, size_t begin, size_t end, bool parse_special,
                 std::vector<Fragment>& out) const;
  void encode_fragments(std::string_view text, const std::vector<Fragment>& fragments,
                        bool add_special, std::vector<TokenId>& out) const;
  void encode_bpe_text(std::string_view text, std::vector<TokenId>& out) const;
  void encode_bpe_word(std::string_view word, std::vector<int32_t>& symbols, bpe::Scratch& scratch,
                       std::vector<TokenId>& out) const;
  void encode_spm_text(std::string_view text, std::vector<TokenId>& out) const;
};

// ---------------------------------------------------------------------------
// Loading

void Tokenizer::Impl::load(const gguf::File& file) {
  model = std::string(file.get_string("tokenizer.ggml.model"));
  if (model == "gpt2") {
    kind = Kind::BPE;
    pre = std::string(file.get_string_opt("tokenizer.ggml.pre").value_or(""));
    pre_tokenizer = PreTokenizer::for_pre(pre);
    if (pre.empty()) pre = "default";
    // llama.cpp's defaults for BPE vocabularies, before the file's keys.
    bos = 11;
    eos = 11;
    add_bos = pre_tokenizer->ignore_merges();  // the llama3 family adds BOS
    add_space_prefix = false;
  } else if (model == "llama") {
    kind = Kind::SPM;
    bos = 1;
    eos = 2;
    unk = 0;
    add_bos = true;
    add_space_prefix = true;
  } else {
    throw std::invalid_argument("unsupported tokenizer.ggml.model '" + model +
                                "' (supported: gpt2 = byte-level BPE, llama = SentencePiece)");
  }

  const std::vector<std::string_view> tokens = file.get_string_array("tokenizer.ggml.tokens");
  const size_t n = tokens.size();
  if (n == 0) throw std::invalid_argument("tokenizer.ggml.tokens is empty");
  if (n > static_cast<size_t>(INT32_MAX)) {
    throw std::invalid_argument("tokenizer.ggml.tokens has too many entries");
  }
  pieces.resize(n);
  for (size_t i = 0; i < n; ++i) {
    pieces[i] = tokens[i].empty() ? "[EMPTY_" + std::to_string(i) + "]" : std::string(tokens[i]);
  }
  piece_to_id.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    const auto [it, inserted] = piece_to_id.emplace(pieces[i], static_cast<TokenId>(i));
    if (!inserted) {
      throw std::invalid_argument("duplicate token in tokenizer.ggml.tokens: '" + pieces[i] +
                                  "' has ids " + std::to_string(it->second) + " and " +
                                  std::to_string(i));
    }
  }

  scores.assign(n, 0.0f);
  if (file.has("tokenizer.ggml.scores")) {
    const std::vector<float> s = file.get_f32_array("tokenizer.ggml.scores");
    if (s.size() < n) {
      throw std::invalid_argument("tokenizer.ggml.scores has " + std::to_string(s.size()) +
                                  " entries for " + std::to_string(n) + " tokens");
    }
    std::copy_n(s.begin(), n, scores.begin());
  }
  types.assign(n, TokenType::NORMAL);
  if (file.has("tokenizer.ggml.token_type")) {
    const std::vector<int32_t> t = file.get_i32_array("tokenizer.ggml.token_type");
    if (t.size() < n) {
      throw std::invalid_argument("tokenizer.ggml.token_type has " + std::to_string(t.size()) +
                                  " entries for " + std::to_string(n) + " tokens");
    }
    for (size_t i = 0; i < n; ++i) {
      types[i] = (t[i] >= 0 && t[i] <= 6) ? static_cast<TokenType>(t[i]) : TokenType::UNDEFINED;
    }
  }

  if (kind == Kind::BPE) load_bpe_merges(file);

  // Special ids: a key overrides the default when it is inside the vocabulary.
  auto in_range = [n](uint64_t id) { return id < n; };
  auto read_id = [&](std::string_view key, TokenId& id) {
    if (id >= 0 && !in_range(static_cast<uint64_t>(id))) id = -1;
    if (auto v = file.get_uint_opt(key); v && in_range(*v)) id = static_cast<TokenId>(*v);
  };
  auto read_opt = [&](std::string_view key, std::optional<TokenId>& id) {
    if (id && !in_range(static_cast<uint64_t>(*id))) id.reset();
    if (auto v = file.get_uint_opt(key); v && in_range(*v)) id = static_cast<TokenId>(*v);
  };
  read_id("tokenizer.ggml.bos_token_id", bos);
  read_id("tokenizer.ggml.eos_token_id", eos);
  read_opt("tokenizer.ggml.eot_token_id", eot);
  read_opt("tokenizer.ggml.eom_token_id", eom);
  read_opt("tokenizer.ggml.unknown_token_id", unk);
  read_opt("tokenizer.ggml.seperator_token_id", sep);  // sic: the GGUF key's spelling
  read_opt("tokenizer.ggml.padding_token_id", pad);

  add_bos = file.get_bool_opt("tokenizer.ggml.add_bos_token").value_or(add_bos);
  add_eos = file.get_bool_opt("tokenizer.ggml.add_eos_token").value_or(add_eos);
  add_space_prefix =
      file.get_bool_opt("tokenizer.ggml.add_space_prefix").value_or(add_space_prefix);
  if (add_bos && bos < 0) {
    throw std::invalid_argument("tokenizer.ggml.add_bos_token is true but there is no BOS token");
  }
  if (add_eos && eos < 0) {
    throw std::invalid_argument("tokenizer.ggml.add_eos_token is true but there is no EOS token");
  }

  detect_special_tokens();

  // Phi-3's special tokens swallow the whitespace after them (llama.cpp keys
  // this on the model name, as its converters record no per-token flags).
  strip.assign(n, 0);
  std::string name(file.get_string_opt("general.name").value_or(""));
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (TokenId id : special_tokens) strip[id] |= kRstrip;
    if (auto id = lookup("</s>")) strip[*id] |= kRstrip;
    for (std::string_view t : {"<unk>", "<s>", "<|endoftext|>"}) {
      if (auto id = lookup(t)) strip[*id] &= static_cast<uint8_t>(~kRstrip);
    }
  }

  // What each token stands for when decoded.
  bytes.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& p = pieces[i];
    switch (types[i]) {
      case TokenType::NORMAL:
        bytes[i] =
            kind == Kind::BPE ? unicode::byte_level_decode(p) : replace_all(p, kSpaceMarker, " ");
        break;
      case TokenType::CONTROL:
      case TokenType::USER_DEFINED:
      case TokenType::UNKNOWN:
        bytes[i] = p;
        break;
      case TokenType::BYTE: {
        const int b = parse_byte_piece(p);
        bytes[i] = b >= 0 ? std::string(1, static_cast<char>(b)) : std::string();
        break;
      }
      default:  // UNUSED, UNDEFINED: nothing, as llama.cpp
        break;
    }
  }

  if (kind == Kind::SPM) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b) {
      const char hex[7] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>', 0};
      auto id = lookup(hex);
      if (!id) id = lookup(std::string(1, static_cast<char>(b)));
      byte_token[b] = id.value_or(unk.value_or(0));
    }
  }
}

void Tokenizer::Impl::load_bpe_merges(const gguf::File& file) {
  if (!file.has("tokenizer.ggml.merges")) {
    throw std::invalid_argument("tokenizer.ggml.merges is missing (needed by a gpt2 tokenizer)");
  }
  const std::vector<std::string_view> lines = file.get_string_array("tokenizer.ggml.merges");
  std::unordered_map<std::string_view, int32_t> extra_ids;  // views into extra_symbols
  auto symbol_of = [&](std::string_view text) -> int32_t {
    if (auto id = lookup(text)) return *id;
    if (auto it = extra_ids.find(text); it != extra_ids.end()) return it->second;
    const auto id = static_cast<int32_t>(pieces.size() + extra_symbols.size());
    extra_symbols.emplace_back(text);
    extra_ids.emplace(extra_symbols.back(), id);
    return id;
  };
  merges.reserve(lines.size());
  std::string joined;
  for (size_t rank = 0; rank < lines.size(); ++rank) {
    const std::string_view line = lines[rank];
    // The separator is the first space after the first character (a merge
    // side may itself be a space in vocabularies without byte-level spelling).
    const size_t space = line.size() > 1 ? line.find(' ', 1) : std::string_view::npos;
    if (space == std::string_view::npos) continue;  // llama.cpp ignores such lines too
    const std::string_view left = line.substr(0, space);
    const std::string_view right = line.substr(space + 1);
    joined.assign(left);
    joined.append(right);
    const int32_t l = symbol_of(left);
    const int32_t r = symbol_of(right);
    const int32_t result = symbol_of(joined);
    merges.insert(l, r, {static_cast<int32_t>(rank), result});
  }
  const auto& map = unicode::ByteLevelMap::get();
  for (int b = 0; b < 256; ++b) byte_symbol[b] = symbol_of(map.byte_to_utf8[b]);
}

void Tokenizer::Impl::detect_special_tokens() {
  // llama.cpp recognises some special tokens by their text (the converters do
  // not always record them) and forces them to CONTROL.
  auto find_first = [&](std::initializer_list<std::string_view> texts) -> std::optional<TokenId> {
    for (auto t : texts) {
      if (auto id = lookup(t)) return id;
    }
    return std::nullopt;
  };
  auto force_control = [&](std::optional<TokenId> id) {
    if (id) types[*id] = TokenType::CONTROL;
  };
  if (!eot) {
    eot = find_first({"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                      "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
                      "<\xEF\xBD\x9C"
                      "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
                      "<end_of_utterance>"});
    force_control(eot);
  }
  if (!eom) {
    eom = find_first({"<|eom_id|>"});
    force_control(eom);
  }
  // Fill-in-the-middle tokens: control tokens; pad/repo/sep also end generation.
  force_control(
      find_first({"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "\xE2\x96\x81<PRE>"}));
  force_control(
      find_first({"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "\xE2\x96\x81<SUF>"}));
  force_control(
      find_first({"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "\xE2\x96\x81<MID>"}));
  for (auto fim :
       {find_first({"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"}),
        find_first({"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}),
        find_first({"<|file_sep|>"})}) {
    if (fim) {
      types[*fim] = TokenType::CONTROL;
      eog.insert(*fim);
    }
  }
  for (std::string_view t :
       {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
        "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
        "<|end_of_text|>", "<end_of_utterance>"}) {
    if (auto id = lookup(t)) {
      eog.insert(*id);
      types[*id] = TokenType::CONTROL;
    }
  }
  // gpt-oss: these are rendered and matched like user-defined tokens.
  for (std::string_view t : {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}) {
    if (auto id = lookup(t)) types[*id] = TokenType::USER_DEFINED;
  }
  if (eos >= 0) eog.insert(eos);
  if (eot) eog.insert(*eot);
  if (eom) eog.insert(*eom);
  // o200k_harmony: <|end|> ends a message, not the generation, when the
  // vocabulary has <|return|> and <|call|>.
  if (lookup("<|return|>") && lookup("<|call|>")) {
    if (auto end = lookup("<|end|>")) {
      eog.erase(*end);
      types[*end] = TokenType::USER_DEFINED;
    }
  }

  for (size_t i = 0; i < pieces.size(); ++i) {
    const TokenType t = types[i];
    if (t == TokenType::CONTROL || t == TokenType::USER_DEFINED || t == TokenType::UNKNOWN) {
      special_tokens.push_back(static_cast<TokenId>(i));
    }
  }
  // Longest first, so "<|im_end|>" wins over a shorter token it contains.
  std::stable_sort(special_tokens.begin(), special_tokens.end(),
                   [&](TokenId a, TokenId b) { return pieces[a].size() > pieces[b].size(); });
}

// ---------------------------------------------------------------------------
// Encoding

void Tokenizer::Impl::partition(std::string_view text, size_t begin, size_t end, bool parse_special,
                                std::vector<Fragment>& out) const {
  if (begin == end) return;
  std::vector<Fragment> current{{false, -1, begin, end}};
  std::vector<Fragment> next;
  const std::string_view range = text.substr(begin, end - begin);
  for (TokenId id : special_tokens) {
    const TokenType t = types[id];
    if (!parse_special && (t == TokenType::CONTROL || t == TokenType::UNKNOWN)) continue;
    const std::string& piece = pieces[id];
    if (range.find(piece) == std::string_view::npos) continue;  // the common case
    next.clear();
    for (const Fragment& f : current) {
      if (f.is_token) {
        next.push_back(f);
        continue;
      }
      size_t pos = f.begin;
      for (;;) {
        const std::string_view rest = text.substr(pos, f.end - pos);
        const size_t hit = rest.find(piece);
        if (hit == std::string_view::npos) break;
        size_t left_end = pos + hit;
        if (strip[id] & kLstrip) {
          while (left_end > pos && is_ascii_space(text[left_end - 1])) --left_end;
        }
        if (left_end > pos) next.push_back({false, -1, pos, left_end});
        next.push_back({true, id, 0, 0});
        pos += hit + piece.size();
        if (strip[id] & kRstrip) {
          while (pos < f.end && is_ascii_space(text[pos])) ++pos;
        }
      }
      if (pos < f.end) next.push_back({false, -1, pos, f.end});
    }
    std::swap(current, next);
  }
  out.insert(out.end(), current.begin(), current.end());
}

void Tokenizer::Impl::encode_fragments(std::string_view text,
                                       const std::vector<Fragment>& fragments, bool add_special,
                                       std::vector<TokenId>& out) const {
  if (add_special && add_bos) out.push_back(bos);
  bool after_special = true;  // SentencePiece: a space prefix at the start and after specials
  for (const Fragment& f : fragments) {
    if (f.is_token) {
      out.push_back(f.token);
      after_special = true;
      continue;
    }
    const std::string_view run = text.substr(f.begin, f.end - f.begin);
    if (kind == Kind::BPE) {
      encode_bpe_text(run, out);
    } else {
      std::string escaped;
      escaped.reserve(run.size() + 8);
      if (add_space_prefix && after_special) escaped += ' ';
      escaped.append(run);
      encode_spm_text(replace_all(escaped, " ", kSpaceMarker), out);
    }
    after_special = false;
  }
  if (add_special && add_eos) out.push_back(eos);
}

void Tokenizer::Impl::encode_bpe_text(std::string_view text, std::vector<TokenId>& out) const {
  const std::string clean = unicode::sanitize_utf8(text);
  std::vector<std::string_view> words;
  words.reserve(clean.size() / 4 + 1);
  pre_tokenizer->split(clean, words);
  std::vector<int32_t> symbols;
  bpe::Scratch scratch;
  // Words repeat (" the", "\n    "): each distinct word is merged once per
  // call and later copies reuse its ids from `out`. The merge-table lookups
  // are cache misses, so this is most of the speed on long text.
  struct Span {
    size_t begin, size;
  };
  std::unordered_map<std::string_view, Span> seen;
  seen.reserve(std::min<size_t>(words.size(), 1 << 14));
  for (std::string_view word : words) {
    if (word.size() == 1) {
      encode_bpe_word(word, symbols, scratch, out);
      continue;
    }
    const auto [it, inserted] = seen.try_emplace(word, Span{out.size(), 0});
    if (inserted) {
      encode_bpe_word(word, symbols, scratch, out);
      it->second.size = out.size() - it->second.begin;
    } else {
      const Span span = it->second;
      out.reserve(out.size() + span.size);  // no reallocation below: indices stay valid
      for (size_t k = 0; k < span.size; ++k) out.push_back(out[span.begin + k]);
    }
  }
}

void Tokenizer::Impl::encode_bpe_word(std::string_view word, std::vector<int32_t>& symbols,
                                      bpe::Scratch& scratch, std::vector<TokenId>& out) const {
  const auto n_vocab = static_cast<int32_t>(pieces.size());
  if (pre_tokenizer->ignore_merges() && word.size() > 1) {
    // llama3: a word that is a token is used as is, without merging.
    if (auto id = lookup(unicode::byte_level_encode(word))) {
      out.push_back(*id);
      return;
    }
  }
  symbols.clear();
  for (char c : word) symbols.push_back(byte_symbol[static_cast<unsigned char>(c)]);
  bpe::merge(merges, symbols, scratch);
  for (int32_t s : symbols) {
    if (s < n_vocab) {
      out.push_back(s);
      continue;
    }
    // Not a token (a merge result or byte the vocabulary lacks): llama.cpp
    // emits the tokens of the single bytes of its spelling that exist.
    for (char c : extra_symbols[static_cast<size_t>(s - n_vocab)]) {
      if (auto id = lookup(std::string_view(&c, 1))) out.push_back(*id);
    }
  }
}

void Tokenizer::Impl::encode_spm_text(std::string_view text, std::vector<TokenId>& out) const {
  // SentencePiece BPE: start from characters, repeatedly merge the adjacent
  // pair whose concatenation is the highest-scoring token (leftmost among
  // equals); then map each symbol to its token, splitting symbols that are no
  // token back along the merges that built them, and bytes as a last resort.
  struct Symbol {
    int prev, next;
    size_t begin, size;
  };
  struct Bigram {
    int left, right;
    float score;
    size_t size;
  };
  auto bigram_before = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::vector<Symbol> symbols;
  for (size_t pos = 0; pos < text.size();) {
    const size_t len = std::min(
        unicode::utf8_sequence_length(static_cast<unsigned char>(text[pos])), text.size() - pos);
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({index - 1, pos + len == text.size() ? -1 : index + 1, pos, len});
    pos += len;
  }
  std::vector<Bigram> heap;
  std::unordered_map<std::string_view, std::pair<int, int>> built_from;
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const std::string_view joined =
        text.substr(symbols[left].begin, symbols[left].size + symbols[right].size);
    const auto id = lookup(joined);
    if (!id) return;
    heap.push_back({left, right, scores[*id], joined.size()});
    std::push_heap(heap.begin(), heap.end(), bigram_before);
    built_from[joined] = {left, right};
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add(i - 1, i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), bigram_before);
    const Bigram b = heap.back();
    heap.pop_back();
    Symbol& left = symbols[b.left];
    Symbol& right = symbols[b.right];
    if (left.size == 0 || right.size == 0 || left.size + right.size != b.size) continue;
    left.size += right.size;
    right.size = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = b.left;
    try_add(left.prev, b.left);
    try_add(b.left, left.next);
  }
  // Symbols that are no token are split along `built_from` (recursively).
  auto emit = [&](auto&& self, int index) -> void {
    const Symbol& s = symbols[index];
    const std::string_view piece = text.substr(s.begin, s.size);
    if (auto id = lookup(piece)) {
      out.push_back(*id);
      return;
    }
    if (auto it = built_from.find(piece); it != built_from.end()) {
      self(self, it->second.first);
      self(self, it->second.second);
      return;
    }
    for (char c : piece) out.push_back(byte_token[static_cast<unsigned char>(c)]);
  };
  if (symbols.empty()) return;
  for (int i = 0; i != -1; i = symbols[i].next) emit(emit, i);
}

// ---------------------------------------------------------------------------
// Public API

Tokenizer Tokenizer::from_gguf(const gguf::File& file) {
  auto impl = std::make_shared<Impl>();
  impl->load(file);
  return Tokenizer(std::move(impl));
}

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  std::vector<Fragment> fragments;
  impl_->partition(text, 0, text.size(), parse_special, fragments);
  std::vector<TokenId> out;
  out.reserve(text.size() / 3 + 2);
  impl_->encode_fragments(text, fragments, add_special, out);
  return out;
}

std::vector<TokenId> Tokenizer::encode_segments(std::span<const TextSegment> segments,
                                                bool add_special) const {
  std::string joined;
  for (const auto& s : segments) joined += s.text;
  std::vector<Fragment> fragments;
  size_t begin = 0;
  for (const auto& s : segments) {
    impl_->partition(joined, begin, begin + s.text.size(), s.parse_special, fragments);
    begin += s.text.size();
  }
  // Text on both sides of a segment boundary is one run, as in the joined text.
  std::vector<Fragment> merged;
  for (const Fragment& f : fragments) {
    if (!f.is_token && !merged.empty() && !merged.back().is_token && merged.back().end == f.begin) {
      merged.back().end = f.end;
    } else {
      merged.push_back(f);
    }
  }
  std::vector<TokenId> out;
  impl_->encode_fragments(joined, merged, add_special, out);
  return out;
}

std::string Tokenizer::decode(std::span<const TokenId> ids) const {
  std::string out;
  bool at_start = true;
  for (size_t i = 0; i < ids.size(); ++i) {
    std::string_view b = token_bytes(ids[i]);
    if (at_start && !(i == 0 && ids[i] == impl_->bos)) {
      if (impl_->kind == Kind::SPM && impl_->add_space_prefix && !b.empty() && b[0] == ' ') {
        b.remove_prefix(1);
      }
      at_start = false;
    }
    out.append(b);
  }
  return out;
}

std::string_view Tokenizer::token_piece(TokenId id) const {
  impl_->check_id(id);
  return impl_->pieces[id];
}
std::string_view Tokenizer::token_bytes(TokenId id) const {
  impl_->check_id(id);
  return impl_->bytes[id];
}
TokenType Tokenizer::token_type(TokenId id) const {
  impl_->check_id(id);
  return impl_->types[id];
}
float Tokenizer::token_score(TokenId id) const {
  impl_->check_id(id);
  return impl_->scores[id];
}
std::optional<TokenId> Tokenizer::find_piece(std::string_view piece) const {
  return impl_->lookup(piece);
}

size_t Tokenizer::vocab_size() const { return impl_->pieces.size(); }
Tokenizer::Kind Tokenizer::kind() const { return impl_->kind; }
std::string_view Tokenizer::model_name() const { return impl_->model; }
std::string_view Tokenizer::pre_name() const { return impl_->pre; }
TokenId Tokenizer::bos() const { return impl_->bos; }
TokenId Tokenizer::eos() const { return impl_->eos; }
std::optional<TokenId> Tokenizer::eot() const { return impl_->eot; }
std::optional<TokenId> Tokenizer::eom() const { return impl_->eom; }
std::optional<TokenId> Tokenizer::unk() const { return impl_->unk; }
std::optional<TokenId> Tokenizer::pad() const { return impl_->pad; }
std::optional<TokenId> Tokenizer::sep() const { return impl_->sep; }
bool Tokenizer::is_eog(TokenId id) const { return impl_->eog.count(id) > 0; }
bool Tokenizer::is_control(TokenId id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->types.size() &&
         impl_->types[id] == TokenType::CONTROL;
}
bool Tokenizer::add_bos() const { return impl_->add_bos; }
bool Tokenizer::add_eos() const { return impl_->add_eos; }
bool Tokenizer::add_space_prefix() const { return impl_->add_space_prefix; }

// ---------------------------------------------------------------------------
// Streaming

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

std::string StreamingDetokenizer::push(TokenId id) {
  std::string_view b = tokenizer_.token_bytes(id);
  if (at_start_ && !(first_token_ && id == tokenizer_.bos())) {
    if (tokenizer_.kind() == Tokenizer::Kind::SPM && tokenizer_.add_space_prefix() && !b.empty() &&
        b[0] == ' ') {
      b.remove_prefix(1);
    }
    at_start_ = false;
  }
  first_token_ = false;
  pending_.append(b);
  const size_t ready = unicode::complete_prefix_length(pending_);
  if (ready == 0) return {};
  std::string out = unicode::replace_invalid_utf8(std::string_view(pending_).substr(0, ready));
  pending_.erase(0, ready);
  return out;
}

std::string StreamingDetokenizer::flush() {
  std::string out = unicode::replace_invalid_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace kiln
