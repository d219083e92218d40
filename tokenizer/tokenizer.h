// Tokenizer built from a GGUF file's tokenizer.* metadata: byte-level BPE
// (tokenizer.ggml.model "gpt2") and SentencePiece BPE ("llama"), with the
// special-token handling of llama.cpp so ids match it exactly.
//
// A Tokenizer owns copies of everything it needs: the gguf::File it came from
// may be closed. It is immutable after construction and cheap to copy (the
// tables are shared), so one instance can serve many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

namespace gguf {
class File;
}

using TokenId = int32_t;

// tokenizer.ggml.token_type values (the GGUF convention).
enum class TokenType : int32_t {
  UNDEFINED = 0,
  NORMAL = 1,
  UNKNOWN = 2,
  CONTROL = 3,
  USER_DEFINED = 4,
  UNUSED = 5,
  BYTE = 6,
};

// A piece of text to tokenize and whether control tokens written in it are
// recognised. A chat prompt is template markup (parse_special = true) and
// message content (false), so a user typing "<|im_end|>" gets text.
struct TextSegment {
  std::string text;
  bool parse_special = false;
};

class Tokenizer {
 public:
  enum class Kind { BPE, SPM };

  // Throws std::invalid_argument naming an unsupported tokenizer.ggml.model or
  // tokenizer.ggml.pre or what else is wrong with the vocabulary (gguf::Error
  // for a missing or mistyped key).
  static Tokenizer from_gguf(const gguf::File& file);

  // add_special: BOS/EOS as tokenizer.ggml.add_bos_token/add_eos_token say.
  // parse_special: control tokens written in the text become their ids;
  // otherwise they are tokenized as plain text. USER_DEFINED tokens are always
  // matched (as llama.cpp and Hugging Face do).
  std::vector<TokenId> encode(std::string_view text, bool add_special, bool parse_special) const;
  // Tokenizes the concatenation of the segments, each with its own
  // parse_special; text on both sides of a segment boundary is tokenized as one
  // run (as if the segments had been joined), only special-token matching
  // differs. add_special as in encode.
  std::vector<TokenId> encode_segments(std::span<const TextSegment> segments,
                                       bool add_special = false) const;

  // The bytes the ids stand for, concatenated. Control tokens are rendered as
  // their text ("<|im_end|>"); for SentencePiece vocabularies with
  // add_space_prefix the leading space of the first token (after a leading
  // BOS) is dropped, undoing the space encode added. Throws std::out_of_range
  // naming an id outside the vocabulary.
  std::string decode(std::span<const TokenId> ids) const;

  std::string_view token_piece(TokenId id) const;  // raw vocab string
  std::string_view token_bytes(TokenId id) const;  // the bytes this token stands for
  TokenType token_type(TokenId id) const;
  float token_score(TokenId id) const;
  // The id of a vocab string, if it is one.
  std::optional<TokenId> find_piece(std::string_view piece) const;

  size_t vocab_size() const;
  Kind kind() const;
  std::string_view model_name() const;  // tokenizer.ggml.model
  std::string_view pre_name() const;    // tokenizer.ggml.pre ("" for SPM)

  // -1 when the vocabulary has none. eot: the file's eot_token_id, else the
  // first of <|eot_id|>, <|im_end|>, <|end|>, <end_of_turn>, <|endoftext|>, ...
  // that exists (llama.cpp takes whichever its hash map yields first; the
  // EOG set, which is what stops generation, is the same either way).
  TokenId bos() const;
  TokenId eos() const;
  std::optional<TokenId> eot() const;
  std::optional<TokenId> eom() const;
  std::optional<TokenId> unk() const;
  std::optional<TokenId> pad() const;
  std::optional<TokenId> sep() const;

  // End of generation: eos, eot, eom and the end-of-turn control tokens
  // llama.cpp recognises by text (<|im_end|>, <|eot_id|>, <|end|>, ...).
  bool is_eog(TokenId id) const;
  bool is_control(TokenId id) const;
  bool add_bos() const;
  bool add_eos() const;
  bool add_space_prefix() const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Turns generated ids into text as they arrive. Never emits part of a UTF-8
// sequence: bytes of a character split across tokens are held back until the
// character is complete; ill-formed bytes become U+FFFD, so every chunk is
// valid UTF-8. Applies the same leading-space rule as Tokenizer::decode.
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer& tokenizer);

  // The newly completed text (possibly empty). Throws like decode on a bad id.
  std::string push(TokenId id);
  // Whatever is still held back; an incomplete trailing sequence becomes U+FFFD.
  std::string flush();

 private:
  Tokenizer tokenizer_;  // a cheap copy: the tables are shared
  std::string pending_;
  bool at_start_ = true;     // the leading-space rule still applies
  bool first_token_ = true;  // a BOS here does not count as the start
};

}  // namespace kiln
