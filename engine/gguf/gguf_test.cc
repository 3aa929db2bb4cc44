#include "engine/gguf/gguf.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

using ::testing::HasSubstr;

std::string Shared(const std::string& rel) {
  const char* dir = std::getenv("SINKSERVE_SHARED");
  return std::string(dir ? dir : "../shared") + "/" + rel;
}

// Hand-assembles GGUF bytes, independently of GgufWriter, so that malformed
// files can be made on purpose.
class Bytes {
 public:
  template <typename T>
  Bytes& Put(T v) {
    const size_t at = b_.size();
    b_.resize(at + sizeof(T));
    std::memcpy(b_.data() + at, &v, sizeof(T));
    return *this;
  }
  Bytes& Str(const std::string& s) {
    Put<uint64_t>(s.size());
    b_.insert(b_.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& Header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    b_.insert(b_.end(), {'G', 'G', 'U', 'F'});
    return Put<uint32_t>(version).Put<uint64_t>(n_tensors).Put<uint64_t>(n_kv);
  }
  Bytes& KvU32(const std::string& key, uint32_t v) {
    return Str(key).Put<uint32_t>(4).Put<uint32_t>(v);
  }
  Bytes& Tensor(const std::string& name, std::vector<int64_t> dims,
                uint32_t type, uint64_t offset) {
    Str(name).Put<uint32_t>(static_cast<uint32_t>(dims.size()));
    for (int64_t d : dims) Put<int64_t>(d);
    return Put<uint32_t>(type).Put<uint64_t>(offset);
  }
  Bytes& PadTo(size_t alignment) {
    while (b_.size() % alignment) b_.push_back(0);
    return *this;
  }
  Bytes& Zeros(size_t n) {
    b_.resize(b_.size() + n);
    return *this;
  }
  size_t size() const { return b_.size(); }
  const std::vector<uint8_t>& data() const { return b_; }

 private:
  std::vector<uint8_t> b_;
};

absl::StatusOr<std::unique_ptr<GgufFile>> Parse(const Bytes& b) {
  return GgufFile::FromBuffer(b.data().data(), b.size());
}

void ExpectError(const Bytes& b, const std::string& fragment) {
  auto f = Parse(b);
  ASSERT_FALSE(f.ok()) << "parsed, expected an error with: " << fragment;
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(fragment));
}

// A small file using every value type, a nested array and two tensors.
Bytes SmallValidFile() {
  Bytes b;
  b.Header(2, 15);
  b.Str("u8").Put<uint32_t>(0).Put<uint8_t>(200);
  b.Str("i8").Put<uint32_t>(1).Put<int8_t>(-100);
  b.Str("u16").Put<uint32_t>(2).Put<uint16_t>(60000);
  b.Str("i16").Put<uint32_t>(3).Put<int16_t>(-30000);
  b.Str("u32").Put<uint32_t>(4).Put<uint32_t>(4000000000u);
  b.Str("i32").Put<uint32_t>(5).Put<int32_t>(-2000000000);
  b.Str("f32").Put<uint32_t>(6).Put<float>(1.5f);
  b.Str("bool").Put<uint32_t>(7).Put<uint8_t>(1);
  b.Str("str").Put<uint32_t>(8).Str("hello");
  b.Str("u64").Put<uint32_t>(10).Put<uint64_t>(~0ull);
  b.Str("i64").Put<uint32_t>(11).Put<int64_t>(-5);
  b.Str("f64").Put<uint32_t>(12).Put<double>(-0.25);
  b.Str("strs").Put<uint32_t>(9).Put<uint32_t>(8).Put<uint64_t>(2).Str("a").Str(
      "bc");
  // [[1, 2], [3]] as an array of uint8 arrays.
  b.Str("nested").Put<uint32_t>(9).Put<uint32_t>(9).Put<uint64_t>(2);
  b.Put<uint32_t>(0).Put<uint64_t>(2).Put<uint8_t>(1).Put<uint8_t>(2);
  b.Put<uint32_t>(0).Put<uint64_t>(1).Put<uint8_t>(3);
  b.Str("floats").Put<uint32_t>(9).Put<uint32_t>(6).Put<uint64_t>(3);
  b.Put<float>(0.5f).Put<float>(-1.f).Put<float>(2.f);
  b.Tensor("a", {4, 2}, 0, 0);    // f32, 32 bytes
  b.Tensor("b", {32, 1}, 8, 32);  // q8_0, 34 bytes
  b.PadTo(32).Zeros(32 + 34);
  return b;
}

TEST(GgufTest, ParsesEveryValueType) {
  const Bytes b = SmallValidFile();
  auto f = Parse(b);
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& file = **f;
  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(file.metadata().size(), 15u);
  EXPECT_EQ(file.metadata()[0].key, "u8");
  EXPECT_EQ(*file.GetUint("u8"), 200u);
  EXPECT_EQ(*file.GetInt("i8"), -100);
  EXPECT_EQ(*file.GetUint("u16"), 60000u);
  EXPECT_EQ(*file.GetInt("i16"), -30000);
  EXPECT_EQ(*file.GetUint("u32"), 4000000000u);
  EXPECT_EQ(*file.GetInt("u32"), 4000000000);
  EXPECT_EQ(*file.GetInt("i32"), -2000000000);
  EXPECT_EQ(*file.GetDouble("f32"), 1.5);
  EXPECT_EQ(*file.GetBool("bool"), true);
  EXPECT_EQ(*file.GetString("str"), "hello");
  EXPECT_EQ(*file.GetUint("u64"), ~0ull);
  EXPECT_EQ(*file.GetInt("i64"), -5);
  EXPECT_EQ(*file.GetDouble("f64"), -0.25);
  EXPECT_EQ(*file.GetDouble("i64"), -5.0);
  EXPECT_THAT(*file.GetStringArray("strs"), ::testing::ElementsAre("a", "bc"));
  EXPECT_THAT(*file.GetFloatArray("floats"),
              ::testing::ElementsAre(0.5f, -1.f, 2.f));

  const GgufArray* nested = file.Find("nested")->AsArray();
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->element_type, GgufValueType::kArray);
  ASSERT_EQ(nested->elements.size(), 2u);
  const GgufArray* first = nested->elements[0].AsArray();
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->element_type, GgufValueType::kUint8);
  EXPECT_EQ(*first->elements[1].AsUint(), 2u);
  EXPECT_EQ(*nested->elements[1].AsArray()->elements[0].AsUint(), 3u);

  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.data_offset() % 32, 0u);
  const GgufTensorInfo* t = file.FindTensor("b");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->type->type, GgmlType::kQ8_0);
  EXPECT_EQ(t->num_elements, 32);
  EXPECT_EQ(t->size_bytes, 34u);
  EXPECT_EQ(t->data, b.data().data() + file.data_offset() + 32);
  EXPECT_EQ(file.FindTensor("a")->size_bytes, 32u);
  EXPECT_EQ(file.FindTensor("c"), nullptr);
}

TEST(GgufTest, AccessorErrors) {
  const Bytes b = SmallValidFile();
  auto f = Parse(b);
  ASSERT_TRUE(f.ok());
  const GgufFile& file = **f;
  EXPECT_EQ(file.Find("missing"), nullptr);
  EXPECT_EQ(file.GetUint("missing").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(file.GetUint("str").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.GetUint("str").status().message()),
              HasSubstr("'str'"));
  EXPECT_EQ(file.GetUint("i64").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file.GetInt("u64").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file.GetBool("u8").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file.GetString("strs").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file.GetDouble("bool").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file.Find("u8")->AsArray(), nullptr);
  EXPECT_EQ(file.GetStringArray("u8").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto floats_as_strings = file.GetStringArray("floats");
  EXPECT_EQ(floats_as_strings.status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(floats_as_strings.status().message()),
              HasSubstr("floats[0]"));
  EXPECT_FALSE(file.GetIntArray("nested").ok());
}

TEST(GgufTest, EveryTruncationFails) {
  const Bytes b = SmallValidFile();
  for (size_t n = 0; n < b.size(); ++n) {
    auto f = GgufFile::FromBuffer(b.data().data(), n);
    EXPECT_FALSE(f.ok()) << "prefix of " << n << " bytes parsed";
  }
  EXPECT_TRUE(Parse(b).ok());
}

TEST(GgufTest, RejectsBadMagicAndVersions) {
  Bytes bad_magic;
  bad_magic.Put<uint32_t>(0x46554746)
      .Put<uint32_t>(3)
      .Put<uint64_t>(0)
      .Put<uint64_t>(0);
  ExpectError(bad_magic, "not \"GGUF\"");
  ExpectError(Bytes().Header(0, 0, 1),
              "version 1 at offset 4 is not supported");
  ExpectError(Bytes().Header(0, 0, 99), "version 99");
  ExpectError(Bytes().Header(0, 0, 0x03000000), "big-endian");
  EXPECT_TRUE(Parse(Bytes().Header(0, 0, 2)).ok());
  EXPECT_FALSE(GgufFile::FromBuffer(nullptr, 0).ok());
}

TEST(GgufTest, RejectsCountsTheFileCannotHold) {
  ExpectError(Bytes().Header(0, ~0ull), "metadata count 18446744073709551615");
  ExpectError(Bytes().Header(1ull << 40, 0), "tensor count 1099511627776");
  Bytes long_string;
  long_string.Header(0, 1).Put<uint64_t>(~0ull).Zeros(200);
  ExpectError(long_string,
              "string length 18446744073709551615 at offset 24 exceeds the 200 "
              "bytes left");
  Bytes long_value;
  long_value.Header(0, 1).Str("k").Put<uint32_t>(8).Put<uint64_t>(1000).Zeros(
      10);
  ExpectError(long_value, "string length 1000");
  Bytes huge_array;
  huge_array.Header(0, 1)
      .Str("k")
      .Put<uint32_t>(9)
      .Put<uint32_t>(4)
      .Put<uint64_t>(1ull << 61);
  ExpectError(huge_array, "array count 2305843009213693952");
  Bytes strings_array;  // 100 strings need 800 bytes of lengths
  strings_array.Header(0, 1)
      .Str("k")
      .Put<uint32_t>(9)
      .Put<uint32_t>(8)
      .Put<uint64_t>(100)
      .Zeros(400);
  ExpectError(strings_array, "array count 100");
}

TEST(GgufTest, RejectsBadValues) {
  Bytes type;
  type.Header(0, 1).Str("k").Put<uint32_t>(13).Put<uint32_t>(0);
  ExpectError(type, "unknown value type 13");
  Bytes element;
  element.Header(0, 1)
      .Str("k")
      .Put<uint32_t>(9)
      .Put<uint32_t>(77)
      .Put<uint64_t>(0);
  ExpectError(element, "unknown array element type 77");
  Bytes boolean;
  boolean.Header(0, 1).Str("k").Put<uint32_t>(7).Put<uint8_t>(2);
  ExpectError(boolean, "bool value 2");
  ExpectError(Bytes().Header(0, 2).KvU32("k", 1).KvU32("k", 2),
              "duplicate key");
  Bytes deep;
  deep.Header(0, 1).Str("k").Put<uint32_t>(9);
  for (int i = 0; i < 20; ++i) deep.Put<uint32_t>(9).Put<uint64_t>(1);
  deep.Put<uint32_t>(0).Put<uint64_t>(0);
  ExpectError(deep, "nests arrays deeper");
}

TEST(GgufTest, Alignment) {
  ExpectError(Bytes().Header(0, 1).KvU32("general.alignment", 0),
              "power of two, got 0");
  ExpectError(Bytes().Header(0, 1).KvU32("general.alignment", 48),
              "power of two, got 48");
  Bytes str;
  str.Header(0, 1).Str("general.alignment").Put<uint32_t>(8).Str("x");
  ExpectError(str, "got a string");

  Bytes b;
  b.Header(1, 1).KvU32("general.alignment", 64).Tensor("t", {16}, 0, 0);
  b.PadTo(64).Zeros(64);
  auto f = Parse(b);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->alignment(), 64u);
  // Header 24 + kv 33 + tensor info 33 = 90 bytes, padded to 128.
  EXPECT_EQ((*f)->data_offset(), 128u);
}

TEST(GgufTest, RejectsBadTensors) {
  auto one = [](std::vector<int64_t> dims, uint32_t type, uint64_t offset,
                size_t data) {
    Bytes b;
    b.Header(1, 0)
        .Tensor("w", std::move(dims), type, offset)
        .PadTo(32)
        .Zeros(data);
    return b;
  };
  EXPECT_TRUE(Parse(one({8, 4}, 0, 0, 128)).ok());
  ExpectError(one({8, 4}, 4, 0, 128), "unknown ggml type 4");
  ExpectError(one({8, 4}, 99, 0, 128), "unknown ggml type 99");
  ExpectError(one({1, 1, 1, 1, 1}, 0, 0, 4), "5 dimensions");
  ExpectError(one({8, -4}, 0, 0, 128), "negative dimension -4");
  ExpectError(one({1ll << 32, 1ll << 32}, 0, 0, 128), "overflows");
  ExpectError(one({1ll << 62}, 0, 0, 128), "byte size overflows");
  ExpectError(one({33, 1}, 8, 0, 128),
              "not a multiple of the q8_0 block size 32");
  ExpectError(one({8, 4}, 0, 8, 128), "not a multiple of the alignment 32");
  ExpectError(one({8, 4}, 0, 0, 127), "extends past the end of the file");
  ExpectError(one({8, 4}, 0, 1ull << 63, 128), "extends past the end");
  Bytes dup;
  dup.Header(2, 0)
      .Tensor("w", {8}, 0, 0)
      .Tensor("w", {8}, 0, 32)
      .PadTo(32)
      .Zeros(64);
  ExpectError(dup, "duplicate tensor name");
}

TEST(GgufTest, RandomCorruptionNeverCrashes) {
  const Bytes valid = SmallValidFile();
  std::mt19937 rng(11);
  int parsed = 0;
  for (int i = 0; i < 3000; ++i) {
    std::vector<uint8_t> b = valid.data();
    const int flips = 1 + rng() % 4;
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] ^= 1u << (rng() % 8);
    auto f = GgufFile::FromBuffer(b.data(), b.size());
    if (f.ok()) {
      ++parsed;
      for (const GgufTensorInfo& t : (*f)->tensors()) {
        ASSERT_LE(t.data + t.size_bytes, b.data() + b.size());
      }
    }
  }
  EXPECT_GT(parsed, 0);  // flips inside tensor data or values stay valid
}

// --- Real files
// ---------------------------------------------------------------

TEST(GgufTest, Stories260K) {
  auto f = GgufFile::Open(Shared("models/stories260K.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& file = **f;
  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(file.file_size(), 1185376u);  // models/README.md
  EXPECT_EQ(file.alignment(), 32u);
  ASSERT_EQ(file.tensors().size(), 48u);
  for (const GgufTensorInfo& t : file.tensors()) {
    EXPECT_EQ(t.type->type, GgmlType::kF32) << t.name;
    EXPECT_EQ(t.size_bytes, static_cast<uint64_t>(t.num_elements) * 4);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 32, 0u);
  }
  auto shape = [&](const char* name) { return file.FindTensor(name)->shape; };
  using V = std::vector<int64_t>;
  EXPECT_EQ(shape("token_embd.weight"), (V{64, 512}));
  EXPECT_EQ(shape("output.weight"), (V{64, 512}));
  EXPECT_EQ(shape("output_norm.weight"), (V{64}));
  for (int l = 0; l < 5; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    EXPECT_EQ(shape((p + "attn_q.weight").c_str()), (V{64, 64}));
    EXPECT_EQ(shape((p + "attn_k.weight").c_str()), (V{64, 32}));
    EXPECT_EQ(shape((p + "attn_v.weight").c_str()), (V{64, 32}));
    EXPECT_EQ(shape((p + "attn_output.weight").c_str()), (V{64, 64}));
    EXPECT_EQ(shape((p + "ffn_gate.weight").c_str()), (V{64, 172}));
    EXPECT_EQ(shape((p + "ffn_up.weight").c_str()), (V{64, 172}));
    EXPECT_EQ(shape((p + "ffn_down.weight").c_str()), (V{172, 64}));
    EXPECT_EQ(shape((p + "attn_norm.weight").c_str()), (V{64}));
  }
  // The last tensor ends exactly at the end of the file.
  const GgufTensorInfo& last = file.tensors().back();
  EXPECT_EQ(last.data + last.size_bytes, file.file_data() + file.file_size());
  // Trained weights: finite, not all zero.
  const GgufTensorInfo* embd = file.FindTensor("token_embd.weight");
  const float* w = reinterpret_cast<const float*>(embd->data);
  double sumsq = 0;
  for (int64_t i = 0; i < embd->num_elements; ++i) {
    ASSERT_TRUE(std::isfinite(w[i]));
    sumsq += w[i] * w[i];
  }
  EXPECT_GT(sumsq, 1.0);

  EXPECT_EQ(*file.GetString("general.architecture"), "llama");
  EXPECT_EQ(*file.GetUint("llama.embedding_length"), 64u);
  EXPECT_EQ(*file.GetUint("llama.attention.head_count_kv"), 4u);
  EXPECT_EQ(*file.GetUint("tokenizer.ggml.bos_token_id"), 1u);
  auto tokens = file.GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok());
  ASSERT_EQ(tokens->size(), 512u);
  EXPECT_EQ((*tokens)[1], "<s>");
  EXPECT_EQ(file.GetFloatArray("tokenizer.ggml.scores")->size(), 512u);
  EXPECT_EQ((*file.GetIntArray("tokenizer.ggml.token_type"))[0], 2);
}

TEST(GgufTest, VocabFiles) {
  struct Case {
    const char* file;
    const char* model;
    size_t n_tokens;
  };
  for (const Case& c : {Case{"ggml-vocab-llama-spm.gguf", "llama", 32000},
                        Case{"ggml-vocab-phi-3.gguf", "llama", 0},
                        Case{"ggml-vocab-gpt-2.gguf", "gpt2", 50257},
                        Case{"ggml-vocab-starcoder.gguf", "gpt2", 0},
                        Case{"ggml-vocab-falcon.gguf", "gpt2", 0},
                        Case{"ggml-vocab-deepseek-coder.gguf", "gpt2", 0}}) {
    SCOPED_TRACE(c.file);
    auto f = GgufFile::Open(Shared(std::string("tokenizer-vectors/") + c.file));
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_TRUE((*f)->tensors().empty());
    EXPECT_EQ(*(*f)->GetString("tokenizer.ggml.model"), c.model);
    auto tokens = (*f)->GetStringArray("tokenizer.ggml.tokens");
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    if (c.n_tokens != 0) {
      EXPECT_EQ(tokens->size(), c.n_tokens);
    }
    EXPECT_GT(tokens->size(), 1000u);
    if (std::string(c.model) == "gpt2") {
      EXPECT_TRUE((*f)->GetStringArray("tokenizer.ggml.merges").ok());
    }
  }
}

TEST(GgufTest, OpenErrors) {
  auto missing = GgufFile::Open("/nonexistent/file.gguf");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("/nonexistent/file.gguf"));
  EXPECT_FALSE(GgufFile::Open("/").ok());
  // A real file that is not GGUF: the error names the path.
  auto readme = GgufFile::Open(Shared("models/README.md"));
  EXPECT_EQ(readme.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(readme.status().message()),
              HasSubstr("README.md: gguf: magic"));
}

TEST(GgmlTypesTest, Traits) {
  struct Case {
    GgmlType type;
    const char* name;
    int64_t block, bytes;
  };
  // Block sizes and bytes from ggml-common.h's block structs.
  for (const Case& c : {Case{GgmlType::kF32, "f32", 1, 4},
                        {GgmlType::kF16, "f16", 1, 2},
                        {GgmlType::kQ4_0, "q4_0", 32, 18},
                        {GgmlType::kQ4_1, "q4_1", 32, 20},
                        {GgmlType::kQ5_0, "q5_0", 32, 22},
                        {GgmlType::kQ5_1, "q5_1", 32, 24},
                        {GgmlType::kQ8_0, "q8_0", 32, 34},
                        {GgmlType::kQ8_1, "q8_1", 32, 36},
                        {GgmlType::kQ2_K, "q2_K", 256, 84},
                        {GgmlType::kQ3_K, "q3_K", 256, 110},
                        {GgmlType::kQ4_K, "q4_K", 256, 144},
                        {GgmlType::kQ5_K, "q5_K", 256, 176},
                        {GgmlType::kQ6_K, "q6_K", 256, 210},
                        {GgmlType::kQ8_K, "q8_K", 256, 292},
                        {GgmlType::kIQ2_XXS, "iq2_xxs", 256, 66},
                        {GgmlType::kIQ2_XS, "iq2_xs", 256, 74},
                        {GgmlType::kIQ3_XXS, "iq3_xxs", 256, 98},
                        {GgmlType::kIQ1_S, "iq1_s", 256, 50},
                        {GgmlType::kIQ4_NL, "iq4_nl", 32, 18},
                        {GgmlType::kIQ3_S, "iq3_s", 256, 110},
                        {GgmlType::kIQ2_S, "iq2_s", 256, 82},
                        {GgmlType::kIQ4_XS, "iq4_xs", 256, 136},
                        {GgmlType::kI8, "i8", 1, 1},
                        {GgmlType::kI16, "i16", 1, 2},
                        {GgmlType::kI32, "i32", 1, 4},
                        {GgmlType::kI64, "i64", 1, 8},
                        {GgmlType::kF64, "f64", 1, 8},
                        {GgmlType::kIQ1_M, "iq1_m", 256, 56},
                        {GgmlType::kBF16, "bf16", 1, 2},
                        {GgmlType::kTQ1_0, "tq1_0", 256, 54},
                        {GgmlType::kTQ2_0, "tq2_0", 256, 66}}) {
    const GgmlTypeTraits* t = FindGgmlType(static_cast<uint32_t>(c.type));
    ASSERT_NE(t, nullptr) << c.name;
    EXPECT_EQ(t->type, c.type);
    EXPECT_EQ(t->name, c.name);
    EXPECT_EQ(t->block_size, c.block);
    EXPECT_EQ(t->type_size, c.bytes);
  }
  for (uint32_t retired : {4u, 5u, 31u, 32u, 33u, 36u, 39u, 1000u, ~0u}) {
    EXPECT_EQ(FindGgmlType(retired), nullptr) << retired;
  }
  const GgmlTypeTraits& q4k = *FindGgmlType(12);
  EXPECT_EQ(GgmlRowBytes(q4k, 4096), 16 * 144);
  EXPECT_EQ(GgmlRowBytes(q4k, 100), -1);
  EXPECT_EQ(GgmlRowBytes(*FindGgmlType(0), 7), 28);
}

}  // namespace
}  // namespace sinkserve::engine
