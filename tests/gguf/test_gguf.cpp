// GGUF reader and writer: round trips of every value type, typed accessor
// errors, and a corpus of malformed files that must each be rejected with a
// gguf::Error naming the byte offset (never a crash, hang or huge allocation).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "gguf/gguf.h"
#include "gguf/writer.h"

namespace kiln::gguf {
namespace {

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() /
         ("kiln_test_" + std::to_string(::getpid()) + "_" + name);
}

std::vector<std::byte> read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(c.size());
  std::memcpy(out.data(), c.data(), c.size());
  return out;
}

// A small model-like file with every metadata type and three tensors.
std::vector<std::byte> build_sample(std::vector<float>* tensor_a = nullptr) {
  Writer w;
  w.set("general.architecture", MetaValue::string("llama"));
  w.set("general.name", MetaValue::string("sample"));
  w.set("test.u8", {ValueType::UINT8, uint64_t{200}});
  w.set("test.i8", {ValueType::INT8, int64_t{-100}});
  w.set("test.u16", {ValueType::UINT16, uint64_t{60000}});
  w.set("test.i16", {ValueType::INT16, int64_t{-30000}});
  w.set("test.u32", MetaValue::u32(4000000000u));
  w.set("test.i32", MetaValue::i32(-2000000000));
  w.set("test.u64", MetaValue::u64(1ULL << 40));
  w.set("test.i64", {ValueType::INT64, int64_t{-(1LL << 40)}});
  w.set("test.f32", MetaValue::f32(1.5f));
  w.set("test.f64", {ValueType::FLOAT64, 2.25});
  w.set("test.bool", MetaValue::boolean(true));
  w.set("test.strings", MetaValue::string_array({"a", "", "héllo", "<|im_end|>"}));
  const std::vector<float> fa = {0.5f, -1.0f, 3.0f};
  w.set("test.f32s", MetaValue::f32_array(fa));
  const std::vector<int32_t> ia = {1, -2, 3};
  w.set("test.i32s", MetaValue::i32_array(ia));
  MetaArray nested;
  nested.elem_type = ValueType::ARRAY;
  nested.count = 2;
  nested.arrays.push_back(MetaValue::string_array({"x", "y"}));
  nested.arrays.push_back(MetaValue::i32_array(ia));
  w.set("test.nested", {ValueType::ARRAY, nested});

  static std::vector<float> a(64 * 3);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) * 0.25f;
  if (tensor_a) *tensor_a = a;
  w.add_tensor("a.weight", GgmlType::F32, {64, 3}, std::as_bytes(std::span(a)));
  w.add_tensor("b.weight", GgmlType::Q4_0, {64, 2}, [](std::span<std::byte> out) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = std::byte(i * 7);
  });
  w.add_tensor("c.bias", GgmlType::F16, {5},
               [](std::span<std::byte> out) { std::memset(out.data(), 0x3c, out.size()); });
  const auto path = temp_path("sample.gguf");
  w.write(path);
  auto bytes = read_all(path);
  std::filesystem::remove(path);
  return bytes;
}

TEST(GgufRoundTrip, EveryValueTypeAndTensor) {
  std::vector<float> a;
  const auto bytes = build_sample(&a);
  const File f = File::parse(bytes, "sample");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.architecture(), "llama");
  EXPECT_EQ(f.get_string("general.name"), "sample");
  EXPECT_EQ(f.get_uint("test.u8"), 200u);
  EXPECT_EQ(f.get_int("test.i8"), -100);
  EXPECT_EQ(f.get_uint("test.u16"), 60000u);
  EXPECT_EQ(f.get_int("test.i16"), -30000);
  EXPECT_EQ(f.get_uint("test.u32"), 4000000000u);
  EXPECT_EQ(f.get_int("test.i32"), -2000000000);
  EXPECT_EQ(f.get_uint("test.u64"), 1ULL << 40);
  EXPECT_EQ(f.get_int("test.i64"), -(1LL << 40));
  EXPECT_EQ(f.get_f32("test.f32"), 1.5f);
  EXPECT_EQ(f.get_f32("test.f64"), 2.25f);
  EXPECT_TRUE(f.get_bool("test.bool"));
  const auto strings = f.get_string_array("test.strings");
  ASSERT_EQ(strings.size(), 4u);
  EXPECT_EQ(strings[2], "héllo");
  EXPECT_EQ(strings[1], "");
  EXPECT_EQ(f.get_f32_array("test.f32s"), (std::vector<float>{0.5f, -1.0f, 3.0f}));
  EXPECT_EQ(f.get_i32_array("test.i32s"), (std::vector<int32_t>{1, -2, 3}));
  const Array& nested = f.get_array("test.nested");
  ASSERT_EQ(nested.count, 2u);
  EXPECT_EQ(std::get<Array>(nested.arrays[0].data).strings[1], "y");
  EXPECT_EQ(std::get<Array>(nested.arrays[1].data).integer_at(1), -2);

  ASSERT_EQ(f.tensors().size(), 3u);
  const TensorInfo& ta = f.tensor("a.weight");
  EXPECT_EQ(ta.type, GgmlType::F32);
  EXPECT_EQ(ta.n_dims, 2u);
  EXPECT_EQ(ta.ne[0], 64u);
  EXPECT_EQ(ta.ne[1], 3u);
  EXPECT_EQ(ta.rows(), 3u);
  ASSERT_EQ(ta.n_bytes, a.size() * 4);
  EXPECT_EQ(std::memcmp(ta.data.data(), a.data(), ta.n_bytes), 0);
  const TensorInfo& tb = f.tensor("b.weight");
  EXPECT_EQ(tb.n_bytes, 2u * 2u * 18u);
  EXPECT_EQ(tb.data[5], std::byte(35));
  for (const auto& t : f.tensors()) {
    EXPECT_EQ((f.data_offset() + t.offset) % f.alignment(), 0u) << t.name;
  }
  EXPECT_EQ(f.tensor("c.bias").n_bytes, 10u);
}

TEST(GgufRoundTrip, CopyMetadataPreservesEverything) {
  const auto bytes = build_sample();
  const File f = File::parse(bytes, "sample");
  Writer w;
  w.copy_metadata(f);
  for (const auto& t : f.tensors()) {
    w.add_tensor(std::string(t.name), t.type, {t.ne.begin(), t.ne.begin() + t.n_dims}, t.data);
  }
  const auto path = temp_path("copy.gguf");
  w.write(path);
  const auto copy = read_all(path);
  std::filesystem::remove(path);
  EXPECT_EQ(copy, bytes);  // the writer is deterministic: a copy is byte-identical
}

TEST(GgufAccessors, ErrorsNameKeyExpectedAndActual) {
  const auto bytes = build_sample();
  const File f = File::parse(bytes, "sample");
  try {
    (void)f.get_string("test.u32");
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("test.u32"), std::string::npos) << m;
    EXPECT_NE(m.find("uint32"), std::string::npos) << m;
    EXPECT_NE(m.find("expected string"), std::string::npos) << m;
  }
  EXPECT_THROW((void)f.get_uint("missing.key"), Error);
  EXPECT_THROW((void)f.get_uint("test.i8"), Error);  // negative
  EXPECT_THROW((void)f.get_bool("test.u8"), Error);
  EXPECT_THROW((void)f.get_f32_array("test.strings"), Error);
  EXPECT_THROW((void)f.tensor("nope"), Error);
  EXPECT_FALSE(f.get_string_opt("missing").has_value());
}

TEST(GgufVocabOnly, OpensWithoutTensors) {
  const std::filesystem::path dir = std::filesystem::path(KILN_TEST_DATA) / "vocab";
  int seen = 0;
  if (std::filesystem::exists(dir)) {
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      if (e.path().extension() != ".gguf") continue;
      const File f = File::open(e.path());
      EXPECT_TRUE(f.tensors().empty());
      EXPECT_GT(f.get_string_array("tokenizer.ggml.tokens").size(), 1000u);
      ++seen;
    }
  }
  if (seen == 0) GTEST_SKIP() << "no vocab files in " << dir;
}

// ---- malformed files ---------------------------------------------------------

// Minimal byte builder for hand-made (and deliberately broken) files.
struct Bytes {
  std::vector<std::byte> b;
  template <typename T>
  Bytes& pod(T v) {
    const auto at = b.size();
    b.resize(at + sizeof(T));
    std::memcpy(b.data() + at, &v, sizeof(T));
    return *this;
  }
  Bytes& str(std::string_view s) {
    pod<uint64_t>(s.size());
    for (char c : s) b.push_back(std::byte(c));
    return *this;
  }
  Bytes& header(uint64_t tensors, uint64_t kvs, uint32_t version = 3) {
    return pod<uint32_t>(0x46554747)
        .pod<uint32_t>(version)
        .pod<uint64_t>(tensors)
        .pod<uint64_t>(kvs);
  }
  Bytes& pad(size_t align = 32) {
    while (b.size() % align) b.push_back(std::byte{0});
    return *this;
  }
  Bytes& zeros(size_t n) {
    b.resize(b.size() + n);
    return *this;
  }
};

// Expects parse to throw gguf::Error whose message contains every fragment.
void expect_rejected(const std::vector<std::byte>& bytes,
                     std::initializer_list<const char*> fragments) {
  try {
    (void)File::parse(bytes, "bad.gguf");
    ADD_FAILURE() << "accepted a malformed file";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("bad.gguf"), std::string::npos) << m;
    EXPECT_NE(m.find("at byte"), std::string::npos) << m;
    for (const char* f : fragments)
      EXPECT_NE(m.find(f), std::string::npos) << "missing '" << f << "' in: " << m;
  }
}

TEST(GgufMalformed, NotGguf) {
  expect_rejected(Bytes{}.pod<uint32_t>(0x12345678).pod<uint32_t>(3).b, {"not a GGUF file"});
  expect_rejected({}, {"not a GGUF file"});
}

TEST(GgufMalformed, UnsupportedVersion) {
  expect_rejected(Bytes{}.header(0, 0, 1).b, {"version 1"});
  expect_rejected(Bytes{}.header(0, 0, 4).b, {"unsupported GGUF version 4"});
}

TEST(GgufMalformed, EveryTruncationIsRejected) {
  const auto bytes = build_sample();
  // Any prefix that cuts into the header or the tensor data is an error, never
  // a crash (only the padding after the last tensor may go).
  const File whole = File::parse(bytes, "sample");
  size_t end = 0;
  for (const auto& t : whole.tensors())
    end = std::max<size_t>(end, whole.data_offset() + t.offset + t.n_bytes);
  ASSERT_GT(end, 0u);
  for (size_t n = 0; n < end; ++n) {
    std::vector<std::byte> prefix(bytes.begin(), bytes.begin() + static_cast<long>(n));
    EXPECT_THROW((void)File::parse(prefix, "bad.gguf"), Error) << "prefix of " << n << " bytes";
  }
}

TEST(GgufMalformed, HugeCountsAndLengths) {
  expect_rejected(Bytes{}.header(0, 1ULL << 60).b, {"metadata count"});
  expect_rejected(Bytes{}.header(1ULL << 60, 0).b, {"tensor count"});
  expect_rejected(Bytes{}.header(0, 1).pod<uint64_t>(1ULL << 62).zeros(16).b,
                  {"metadata key", "length"});
  // String value whose length exceeds the file.
  expect_rejected(Bytes{}.header(0, 1).str("k").pod<uint32_t>(8).pod<uint64_t>(~0ULL).b,
                  {"length"});
  // Array whose element count cannot fit.
  expect_rejected(
      Bytes{}.header(0, 1).str("k").pod<uint32_t>(9).pod<uint32_t>(4).pod<uint64_t>(1ULL << 61).b,
      {"'k'", "cannot fit"});
  // Array of strings with a huge count.
  expect_rejected(
      Bytes{}.header(0, 1).str("k").pod<uint32_t>(9).pod<uint32_t>(8).pod<uint64_t>(~0ULL).b,
      {"cannot fit"});
}

TEST(GgufMalformed, DeeplyNestedArrays) {
  Bytes b;
  b.header(0, 1).str("k").pod<uint32_t>(9);
  for (int i = 0; i < 100; ++i) b.pod<uint32_t>(9).pod<uint64_t>(1);
  b.pod<uint32_t>(0).pod<uint64_t>(0);
  expect_rejected(b.b, {"nested deeper"});
}

TEST(GgufMalformed, BadValueTypes) {
  expect_rejected(Bytes{}.header(0, 1).str("k").pod<uint32_t>(13).b, {"unknown value type 13"});
  expect_rejected(
      Bytes{}.header(0, 1).str("k").pod<uint32_t>(9).pod<uint32_t>(77).pod<uint64_t>(0).b,
      {"unknown array element type"});
  expect_rejected(Bytes{}.header(0, 1).str("k").pod<uint32_t>(7).pod<uint8_t>(2).b, {"bool"});
  expect_rejected(Bytes{}.header(0, 1).str("").pod<uint32_t>(4).pod<uint32_t>(1).b, {"empty"});
}

TEST(GgufMalformed, DuplicateKey) {
  expect_rejected(Bytes{}
                      .header(0, 2)
                      .str("k")
                      .pod<uint32_t>(4)
                      .pod<uint32_t>(1)
                      .str("k")
                      .pod<uint32_t>(4)
                      .pod<uint32_t>(2)
                      .b,
                  {"duplicate metadata key 'k'"});
}

TEST(GgufMalformed, BadAlignment) {
  expect_rejected(
      Bytes{}.header(0, 1).str("general.alignment").pod<uint32_t>(4).pod<uint32_t>(24).b,
      {"power of two"});
  expect_rejected(Bytes{}.header(0, 1).str("general.alignment").pod<uint32_t>(4).pod<uint32_t>(0).b,
                  {"power of two"});
  expect_rejected(Bytes{}.header(0, 1).str("general.alignment").pod<uint32_t>(8).str("32").b,
                  {"general.alignment", "expected uint32"});
}

// One tensor info; data section follows.
Bytes one_tensor(std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
  Bytes b;
  b.header(1, 0).str(name).pod<uint32_t>(static_cast<uint32_t>(ne.size()));
  for (auto d : ne) b.pod<uint64_t>(d);
  b.pod<uint32_t>(type).pod<uint64_t>(offset);
  return b;
}

TEST(GgufMalformed, TensorInfos) {
  expect_rejected(one_tensor("t", {}, 0, 0).pad().zeros(32).b, {"0 dimensions"});
  expect_rejected(one_tensor("t", {1, 1, 1, 1, 1}, 0, 0).pad().zeros(32).b, {"5 dimensions"});
  expect_rejected(one_tensor("t", {4}, 4, 0).pad().zeros(32).b, {"unknown ggml type id 4"});
  expect_rejected(one_tensor("t", {4}, 1000, 0).pad().zeros(32).b, {"unknown ggml type id 1000"});
  expect_rejected(one_tensor("t", {1ULL << 40, 1ULL << 40}, 0, 0).pad().zeros(32).b, {"overflows"});
  expect_rejected(one_tensor("t", {~0ULL}, 0, 0).pad().zeros(32).b, {"overflow"});
  expect_rejected(one_tensor("t", {33}, 2, 0).pad().zeros(64).b,
                  {"not a multiple", "block size 32"});
  expect_rejected(one_tensor("t", {8}, 0, 3).pad().zeros(64).b,
                  {"not a multiple of the alignment"});
  expect_rejected(one_tensor("t", {8}, 0, 0).pad().zeros(16).b, {"outside the file"});
  expect_rejected(one_tensor("t", {8}, 0, 1ULL << 62).pad().zeros(64).b, {"outside the file"});
  expect_rejected(one_tensor("", {8}, 0, 0).pad().zeros(32).b, {"empty name"});
}

TEST(GgufMalformed, DuplicateAndOverlappingTensors) {
  auto two = [](std::string_view n1, uint64_t off1, std::string_view n2, uint64_t off2) {
    Bytes b;
    b.header(2, 0);
    b.str(n1).pod<uint32_t>(1).pod<uint64_t>(16).pod<uint32_t>(0).pod<uint64_t>(off1);
    b.str(n2).pod<uint32_t>(1).pod<uint64_t>(16).pod<uint32_t>(0).pod<uint64_t>(off2);
    b.pad().zeros(256);
    return b.b;
  };
  expect_rejected(two("t", 0, "t", 64), {"duplicate tensor name 't'"});
  expect_rejected(two("t", 0, "u", 32), {"overlaps"});
  EXPECT_NO_THROW((void)File::parse(two("t", 0, "u", 64), "good.gguf"));
}

TEST(GgufMalformed, RandomCorruptionNeverCrashes) {
  const auto good = build_sample();
  std::mt19937 rng(1234);
  int rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    auto bytes = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      // Mostly hit the header, where the structure is.
      const size_t at = rng() % std::min<size_t>(bytes.size(), rng() % 2 ? 600 : bytes.size());
      bytes[at] = std::byte(rng());
    }
    try {
      const File f = File::parse(bytes, "fuzzed.gguf");
      for (const auto& t : f.tensors()) {
        ASSERT_LE(f.data_offset() + t.offset + t.n_bytes, bytes.size());
      }
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 100);
}

TEST(GgufFile, OpenMissingAndDirectory) {
  EXPECT_THROW((void)File::open("/nonexistent/model.gguf"), Error);
  EXPECT_THROW((void)File::open("/tmp"), Error);
}

TEST(GgufWriter, RejectsBadTensors) {
  Writer w;
  EXPECT_THROW(w.add_tensor("q", GgmlType::Q4_K, {100}, [](std::span<std::byte>) {}), Error);
  w.add_tensor("x", GgmlType::F32, {4}, [](std::span<std::byte>) {});
  EXPECT_THROW(w.add_tensor("x", GgmlType::F32, {4}, [](std::span<std::byte>) {}), Error);
  // Data of the wrong size fails at write time, and no partial file is left.
  std::vector<std::byte> small(3);
  w.add_tensor("y", GgmlType::F32, {4}, small);
  const auto path = temp_path("bad_write.gguf");
  EXPECT_THROW(w.write(path), Error);
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp"));
}

// A zero dimension is valid GGUF (ggml allows empty tensors): the file opens, and the tensor
// has no elements, no bytes and no rows, whatever its other dimensions (rows() used to divide
// by ne[0], which killed `kiln quantize` with SIGFPE).
TEST(GgufTensors, ZeroDimensionMeansNoRows) {
  Bytes b;
  b.header(3, 0);
  b.str("empty").pod<uint32_t>(1).pod<uint64_t>(0).pod<uint32_t>(0).pod<uint64_t>(0);
  b.str("wide").pod<uint32_t>(2).pod<uint64_t>(0).pod<uint64_t>(1ULL << 40);
  b.pod<uint32_t>(2).pod<uint64_t>(0);  // Q4_0: a zero row length is a multiple of the block
  b.str("tall").pod<uint32_t>(2).pod<uint64_t>(8).pod<uint64_t>(0).pod<uint32_t>(0);
  b.pod<uint64_t>(0);
  b.pad();
  const File f = File::parse(b.b, "empty.gguf");
  for (const char* name : {"empty", "wide", "tall"}) {
    const TensorInfo& t = f.tensor(name);
    EXPECT_EQ(t.n_elements, 0u) << name;
    EXPECT_EQ(t.n_bytes, 0u) << name;
    EXPECT_EQ(t.rows(), 0u) << name;
  }
}

// The writer renames its finished file over OUT: anything there but a regular file (or a link
// to one) is refused before a byte is written, and left as it was.
class GgufWriterTarget : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = temp_path("writer_target");
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static Writer small_writer() {
    Writer w;
    w.set("general.name", MetaValue::string("target"));
    w.add_tensor("x", GgmlType::F32, {4},
                 [](std::span<std::byte> out) { std::memset(out.data(), 0, out.size()); });
    return w;
  }
  // write() must throw with every fragment in the message, and leave no OUT.tmp behind.
  void expect_refused(const std::filesystem::path& path,
                      std::initializer_list<std::string> fragments) {
    try {
      small_writer().write(path);
      ADD_FAILURE() << "wrote over " << path;
    } catch (const Error& e) {
      const std::string m = e.what();
      for (const auto& f : fragments) EXPECT_NE(m.find(f), std::string::npos) << m;
      EXPECT_EQ(m.find("Success"), std::string::npos) << m;
    }
    for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
      EXPECT_FALSE(entry.path().string().ends_with(".tmp")) << entry.path();
    }
  }
  std::filesystem::path dir_;
};

TEST_F(GgufWriterTarget, AFifoIsRefusedAndKept) {
  const auto fifo = dir_ / "out.gguf";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_refused(fifo, {fifo.string(), "is a FIFO", "refusing to replace it"});
  EXPECT_TRUE(std::filesystem::is_fifo(std::filesystem::symlink_status(fifo)));
  // Through a link too: the link and the FIFO both stay.
  const auto link = dir_ / "link.gguf";
  std::filesystem::create_symlink(fifo, link);
  expect_refused(link, {link.string(), "symbolic link to " + fifo.string(), "is a FIFO"});
  EXPECT_TRUE(std::filesystem::is_symlink(link));
  EXPECT_TRUE(std::filesystem::is_fifo(std::filesystem::symlink_status(fifo)));
}

TEST_F(GgufWriterTarget, ADirectoryIsRefusedNamingIt) {
  const auto sub = dir_ / "models";
  std::filesystem::create_directory(sub);
  // The old message was "cannot rename the finished file into place: Success".
  expect_refused(sub, {sub.string(), "is a directory"});
  EXPECT_TRUE(std::filesystem::is_directory(sub));
  EXPECT_TRUE(std::filesystem::is_empty(sub));
}

TEST_F(GgufWriterTarget, ALinkToARegularFileReplacesTheTargetAndKeepsTheLink) {
  const auto target = dir_ / "v1.gguf";
  { std::ofstream(target) << "old contents"; }
  const auto link = dir_ / "current.gguf";
  std::filesystem::create_symlink("v1.gguf", link);  // relative, as users make them
  small_writer().write(link);
  ASSERT_TRUE(std::filesystem::is_symlink(link));
  EXPECT_EQ(std::filesystem::read_symlink(link), "v1.gguf");
  const auto bytes = read_all(target);
  EXPECT_EQ(File::parse(bytes, "v1.gguf").get_string("general.name"), "target");
  EXPECT_FALSE(std::filesystem::exists(target.string() + ".tmp"));
}

TEST_F(GgufWriterTarget, ADanglingLinkIsRefusedAndKept) {
  const auto link = dir_ / "dangling.gguf";
  std::filesystem::create_symlink(dir_ / "missing" / "x.gguf", link);
  expect_refused(link, {link.string(), "symbolic link"});
  EXPECT_TRUE(std::filesystem::is_symlink(link));
}

TEST_F(GgufWriterTarget, ALeftoverTmpLinkIsNotFollowed) {
  // OUT.tmp from an interrupted run, here a link to a file that must not be overwritten.
  const auto victim = dir_ / "victim.txt";
  { std::ofstream(victim) << "keep me"; }
  const auto out = dir_ / "out.gguf";
  std::filesystem::create_symlink(victim, out.string() + ".tmp");
  small_writer().write(out);
  EXPECT_EQ(File::parse(read_all(out), "out.gguf").get_string("general.name"), "target");
  std::ifstream in(victim);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "keep me");
}

// The mapping starts 2 MiB aligned (so the page cache's 2 MiB folios can be mapped whole),
// and faulting it onto huge pages, re-read included, leaves every byte as in the file.
// Whether huge pages are granted depends on the kernel and filesystem, so only the report's
// bounds are checked here.
TEST(GgufMapping, HugePageMappingKeepsTheBytes) {
  std::vector<float> a;
  const auto bytes = build_sample(&a);
  const auto path = temp_path("mapped.gguf");
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
  }
  const File f = File::open(path);
  const TensorInfo& ta = f.tensor("a.weight");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ta.data.data() - f.data_offset() - ta.offset) % (2 << 20),
            0u);
  // min_reread_bytes 0: the re-read path runs too whenever the cache holds small pages.
  const File::HugePageMapping first = f.map_on_huge_pages(0);
  EXPECT_EQ(first.mapped_bytes, bytes.size());
  EXPECT_LE(first.huge_bytes, first.mapped_bytes);
  const File::HugePageMapping again = f.map_on_huge_pages(0);
  EXPECT_EQ(again.huge_bytes, first.huge_bytes);
  EXPECT_EQ(again.reread, first.reread);
  EXPECT_EQ(std::memcmp(ta.data.data(), a.data(), ta.n_bytes), 0);
  EXPECT_EQ(f.tensor("b.weight").data[5], std::byte(35));
  EXPECT_EQ(File::parse(bytes, "in memory").map_on_huge_pages().mapped_bytes, 0u);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace kiln::gguf
