#include "engine/gguf/model_fingerprint.h"

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "engine/gguf/gguf.h"
#include "engine/gguf/gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

// A fresh directory under TEST_TMPDIR (Bazel) or /tmp.
std::string TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/session_test.XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
  return tmpl;
}

using ::testing::MatchesRegex;
using ::testing::StartsWith;

std::string Digest(std::string_view bytes) {
  Hash128 h;
  h.Update(bytes);
  return h.HexDigest();
}

TEST(Hash128Test, StableAcrossBuilds) {
  // Regression vectors: a change here invalidates every stored session, so
  // it must be deliberate (and come with a new fingerprint prefix version).
  EXPECT_EQ(Digest(""), "fbf3ba72f0b3518257628ceb55f72bde");
  EXPECT_EQ(Digest("abc"), "edaddb9741dee7bc11fc3322e3965ed6");
}

TEST(Hash128Test, SplitsDoNotMatterLengthsAndEveryBitDo) {
  const std::string text = "The quick brown fox jumps over the lazy dog, twice.";
  Hash128 pieces;
  pieces.Update(text.substr(0, 3));
  pieces.Update(text.substr(3, 17));
  pieces.Update(text.substr(20));
  EXPECT_EQ(pieces.HexDigest(), Digest(text));
  EXPECT_NE(Digest(std::string(8, '\0')), Digest(std::string(9, '\0')));
  EXPECT_NE(Digest(""), Digest(std::string(1, '\0')));
  for (size_t i = 0; i < text.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string t = text;
      t[i] ^= static_cast<char>(1 << bit);
      ASSERT_NE(Digest(t), Digest(text)) << i << ":" << bit;
    }
  }
  Hash128 a, b;
  a.UpdateString("ab");
  a.UpdateString("c");
  b.UpdateString("a");
  b.UpdateString("bc");
  EXPECT_NE(a.HexDigest(), b.HexDigest());
}

class ModelFingerprintTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = TempDir(); }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Of(const SyntheticLlamaSpec& spec, const std::string& name) {
    const std::string path = dir_ + "/" + name + ".gguf";
    absl::Status s = WriteSyntheticLlama(spec, path);
    EXPECT_TRUE(s.ok()) << s;
    auto file = GgufFile::Open(path);
    EXPECT_TRUE(file.ok()) << file.status();
    return file.ok() ? ModelFingerprint(**file) : "";
  }

  std::string dir_;
};

TEST_F(ModelFingerprintTest, SameModelSameFingerprintAnyChangeAnother) {
  SyntheticLlamaSpec spec;
  spec.threads = 1;
  const std::string base = Of(spec, "a");
  EXPECT_THAT(base, MatchesRegex("llama-[0-9a-f]{32}"));
  EXPECT_EQ(Of(spec, "b"), base);  // another file with the same content

  SyntheticLlamaSpec other = spec;
  other.name = "synthetic-finetune";  // general.name
  EXPECT_NE(Of(other, "name"), base);
  other = spec;
  // Only the header is read: other weights under identical metadata and
  // tensor table do not change it (the documented limit).
  other.seed = 2;
  EXPECT_EQ(Of(other, "seed"), base);
  other = spec;
  other.n_layers = 3;
  EXPECT_NE(Of(other, "layers"), base);
  other = spec;
  other.rope_freq_base = 500000.f;
  EXPECT_NE(Of(other, "rope"), base);
  other = spec;
  other.weight_type = GgmlType::kF16;
  EXPECT_NE(Of(other, "f16"), base);
  other = spec;
  other.vocab_size = 513;
  EXPECT_NE(Of(other, "vocab"), base);
  other = spec;
  other.arch = "qwen2";
  EXPECT_THAT(Of(other, "qwen"), StartsWith("qwen2-"));
}

TEST(ModelFingerprintRealTest, Stories260K) {
  const char* shared = std::getenv("SINKSERVE_SHARED");
  if (shared == nullptr) GTEST_SKIP() << "SINKSERVE_SHARED not set";
  const std::string path = std::string(shared) + "/models/stories260K.gguf";
  auto a = GgufFile::Open(path);
  auto b = GgufFile::Open(path);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(ModelFingerprint(**a), ModelFingerprint(**b));
  EXPECT_THAT(ModelFingerprint(**a), StartsWith("llama-"));
}

}  // namespace
}  // namespace sinkserve::engine
