#include "engine/gguf/gguf_writer.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "engine/gguf/model_config.h"
#include "engine/gguf/quant_ref.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

using ::testing::HasSubstr;

std::string Shared(const std::string& rel) {
  const char* dir = std::getenv("SINKSERVE_SHARED");
  return std::string(dir ? dir : "../shared") + "/" + rel;
}

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/" + name;
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool Exists(const std::string& path) { return std::ifstream(path).good(); }

std::unique_ptr<GgufFile> OpenOrDie(const std::string& path) {
  auto f = GgufFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(*f) : nullptr;
}

// Deep equality of two values, arrays included.
bool SameValue(const GgufValue& a, const GgufValue& b) {
  if (a.type != b.type) return false;
  if (a.type != GgufValueType::kArray) return a.value == b.value;
  const GgufArray* x = a.AsArray();
  const GgufArray* y = b.AsArray();
  if (x->element_type != y->element_type ||
      x->elements.size() != y->elements.size()) {
    return false;
  }
  for (size_t i = 0; i < x->elements.size(); ++i) {
    if (!SameValue(x->elements[i], y->elements[i])) return false;
  }
  return true;
}

TEST(GgufWriterTest, EveryValueTypeRoundTrips) {
  GgufWriter w;
  w.AddUint8("u8", 250);
  w.AddInt8("i8", -120);
  w.AddUint16("u16", 65000);
  w.AddInt16("i16", -32000);
  w.AddUint32("u32", 4000000000u);
  w.AddInt32("i32", -7);
  w.AddUint64("u64", 1ull << 60);
  w.AddInt64("i64", -(1ll << 60));
  w.AddFloat32("f32", 0.1f);
  w.AddFloat64("f64", 0.1);
  w.AddBool("bool", false);
  w.AddString("str", "h\xc3\xa9llo");
  w.AddStringArray("strs", {"x", "", "yz"});
  w.AddFloat32Array("floats", std::vector<float>{1.f, -2.5f});
  w.AddInt32Array("ints", std::vector<int32_t>{3, -4});
  // [[int16 -1, 2], []] through the generic path.
  auto inner = std::make_shared<GgufArray>();
  inner->element_type = GgufValueType::kInt16;
  inner->elements = {GgufValue{GgufValueType::kInt16, int64_t{-1}},
                     GgufValue{GgufValueType::kInt16, int64_t{2}}};
  auto empty = std::make_shared<GgufArray>();
  empty->element_type = GgufValueType::kBool;
  auto outer = std::make_shared<GgufArray>();
  outer->element_type = GgufValueType::kArray;
  outer->elements = {
      GgufValue{GgufValueType::kArray, std::shared_ptr<const GgufArray>(inner)},
      GgufValue{GgufValueType::kArray,
                std::shared_ptr<const GgufArray>(empty)}};
  w.AddValue("nested", GgufValue{GgufValueType::kArray,
                                 std::shared_ptr<const GgufArray>(outer)});
  w.AddValue("generic_f32", GgufValue{GgufValueType::kFloat32, 0.75});
  ASSERT_TRUE(w.status().ok()) << w.status();
  const std::string path = TempPath("values.gguf");
  ASSERT_TRUE(w.Write(path).ok());
  EXPECT_FALSE(Exists(path + ".tmp"));

  auto f = OpenOrDie(path);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->version(), 3u);
  ASSERT_EQ(f->metadata().size(), 17u);
  EXPECT_EQ(f->metadata()[0].key, "u8");
  EXPECT_EQ(f->metadata()[16].key, "generic_f32");
  EXPECT_EQ(f->Find("u8")->type, GgufValueType::kUint8);
  EXPECT_EQ(*f->GetUint("u8"), 250u);
  EXPECT_EQ(f->Find("i8")->type, GgufValueType::kInt8);
  EXPECT_EQ(*f->GetInt("i8"), -120);
  EXPECT_EQ(*f->GetUint("u16"), 65000u);
  EXPECT_EQ(*f->GetInt("i16"), -32000);
  EXPECT_EQ(*f->GetUint("u32"), 4000000000u);
  EXPECT_EQ(*f->GetInt("i32"), -7);
  EXPECT_EQ(*f->GetUint("u64"), 1ull << 60);
  EXPECT_EQ(*f->GetInt("i64"), -(1ll << 60));
  EXPECT_EQ(*f->GetDouble("f32"), double(0.1f));
  EXPECT_EQ(*f->GetDouble("f64"), 0.1);
  EXPECT_EQ(*f->GetBool("bool"), false);
  EXPECT_EQ(*f->GetString("str"), "h\xc3\xa9llo");
  EXPECT_THAT(*f->GetStringArray("strs"),
              ::testing::ElementsAre("x", "", "yz"));
  EXPECT_THAT(*f->GetFloatArray("floats"), ::testing::ElementsAre(1.f, -2.5f));
  EXPECT_THAT(*f->GetIntArray("ints"), ::testing::ElementsAre(3, -4));
  EXPECT_TRUE(SameValue(*f->Find("nested"),
                        GgufValue{GgufValueType::kArray,
                                  std::shared_ptr<const GgufArray>(outer)}));
  EXPECT_EQ(f->Find("generic_f32")->type, GgufValueType::kFloat32);
  EXPECT_EQ(*f->GetDouble("generic_f32"), 0.75);
}

TEST(GgufWriterTest, TensorsInMemoryAndStreamed) {
  GgufWriter w;
  w.AddUint32("general.alignment", 64);
  std::vector<uint8_t> a(3 * 5 * 4);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint8_t>(i);
  w.AddTensor("a", GgmlType::kF32, {3, 5}, a);
  w.AddTensor("b", GgmlType::kQ8_0, {64, 2},
              [](const GgufWriter::ByteSink& sink) {
                std::vector<uint8_t> row(
                    68, 7);  // two Q8_0 blocks per row, in two calls
                absl::Status s = sink(row.data(), 68);
                if (!s.ok()) return s;
                row.assign(68, 9);
                return sink(row.data(), 68);
              });
  w.AddTensor("c", GgmlType::kI8, {1}, std::vector<uint8_t>{42});
  const std::string path = TempPath("tensors.gguf");
  ASSERT_TRUE(w.Write(path).ok());
  auto f = OpenOrDie(path);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  ASSERT_EQ(f->tensors().size(), 3u);
  const GgufTensorInfo& ta = f->tensors()[0];
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(0, std::memcmp(ta.data, a.data(), a.size()));
  const GgufTensorInfo& tb = f->tensors()[1];
  EXPECT_EQ(tb.offset, 64u);  // 60 bytes of "a", padded
  EXPECT_EQ(tb.size_bytes, 136u);
  EXPECT_EQ(tb.data[0], 7);
  EXPECT_EQ(tb.data[135], 9);
  EXPECT_EQ(f->tensors()[2].offset, 256u);
  EXPECT_EQ(f->tensors()[2].data[0], 42);
  EXPECT_EQ(f->file_size() % 64, 0u);  // padded after the last tensor too
}

TEST(GgufWriterTest, ErrorsAreKeptAndNoFileIsLeft) {
  {
    GgufWriter w;
    w.AddUint32("k", 1);
    w.AddString("k", "again");
    w.AddUint32("later", 2);  // ignored after the error
    EXPECT_THAT(std::string(w.status().message()),
                HasSubstr("duplicate metadata key 'k'"));
    const std::string path = TempPath("dup.gguf");
    EXPECT_FALSE(w.Write(path).ok());
    EXPECT_FALSE(Exists(path));
  }
  {
    GgufWriter w;
    w.AddUint32("general.alignment", 24);
    EXPECT_FALSE(w.status().ok());
  }
  {
    GgufWriter w;
    w.AddValue("x", GgufValue{GgufValueType::kUint8, uint64_t{300}});
    EXPECT_THAT(std::string(w.status().message()), HasSubstr("does not fit"));
  }
  {
    GgufWriter w;
    w.AddValue("x", GgufValue{GgufValueType::kString, uint64_t{3}});
    EXPECT_FALSE(w.status().ok());
  }
  {
    GgufWriter w;
    w.AddTensor("t", GgmlType::kF32, {4}, std::vector<uint8_t>(15));
    EXPECT_THAT(std::string(w.status().message()), HasSubstr("has 15 bytes"));
  }
  {
    GgufWriter w;
    w.AddTensor("t", GgmlType::kQ4_K, {100}, std::vector<uint8_t>(0));
    EXPECT_THAT(std::string(w.status().message()), HasSubstr("block size 256"));
  }
  {
    GgufWriter w;
    w.AddTensor("t", GgmlType::kF32, {1}, std::vector<uint8_t>(4));
    w.AddTensor("t", GgmlType::kF32, {1}, std::vector<uint8_t>(4));
    EXPECT_THAT(std::string(w.status().message()), HasSubstr("added twice"));
  }
  for (int wrote : {3, 5}) {
    GgufWriter w;
    w.AddTensor("t", GgmlType::kF32, {1},
                [wrote](const GgufWriter::ByteSink& sink) {
                  const uint8_t bytes[5] = {};
                  return sink(bytes, wrote);
                });
    ASSERT_TRUE(w.status().ok());
    const std::string path = TempPath("short.gguf");
    const absl::Status s = w.Write(path);
    EXPECT_THAT(std::string(s.message()), HasSubstr("filler wrote")) << wrote;
    EXPECT_FALSE(Exists(path));
    EXPECT_FALSE(Exists(path + ".tmp"));
  }
}

// Copies every key and tensor of stories260K through the writer: the result
// must read back identical.
TEST(GgufWriterTest, CopiesARealFileExactly) {
  auto src = OpenOrDie(Shared("models/stories260K.gguf"));
  ASSERT_NE(src, nullptr);
  GgufWriter w;
  for (const GgufKv& kv : src->metadata()) w.AddValue(kv.key, kv.value);
  for (const GgufTensorInfo& t : src->tensors()) {
    w.AddTensor(t.name, t.type->type, t.shape,
                std::vector<uint8_t>(t.data, t.data + t.size_bytes));
  }
  const std::string path = TempPath("copy.gguf");
  ASSERT_TRUE(w.Write(path).ok()) << w.status();
  auto copy = OpenOrDie(path);
  ASSERT_NE(copy, nullptr);
  ASSERT_EQ(copy->metadata().size(), src->metadata().size());
  for (size_t i = 0; i < src->metadata().size(); ++i) {
    EXPECT_EQ(copy->metadata()[i].key, src->metadata()[i].key);
    EXPECT_TRUE(SameValue(copy->metadata()[i].value, src->metadata()[i].value))
        << src->metadata()[i].key;
  }
  ASSERT_EQ(copy->tensors().size(), src->tensors().size());
  for (size_t i = 0; i < src->tensors().size(); ++i) {
    const GgufTensorInfo& a = src->tensors()[i];
    const GgufTensorInfo& b = copy->tensors()[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.shape, b.shape);
    EXPECT_EQ(a.offset, b.offset);
    ASSERT_EQ(a.size_bytes, b.size_bytes);
    EXPECT_EQ(0, std::memcmp(a.data, b.data, a.size_bytes)) << a.name;
  }
  // stories260K was written by llama.cpp, which lays files out the same way.
  EXPECT_EQ(ReadAll(path), ReadAll(Shared("models/stories260K.gguf")));
}

}  // namespace
}  // namespace sinkserve::engine
