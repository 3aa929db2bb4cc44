#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "engine/gguf/gguf.h"
#include "engine/gguf/gguf_writer.h"
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

std::unique_ptr<GgufFile> WriteAndOpen(const SyntheticLlamaSpec& spec,
                                       const std::string& name) {
  const std::string path = TempPath(name);
  const absl::Status s = WriteSyntheticLlama(spec, path);
  EXPECT_TRUE(s.ok()) << s;
  if (!s.ok()) return nullptr;
  auto f = GgufFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(*f) : nullptr;
}

std::vector<float> Dequantize(const GgufTensorInfo& t) {
  std::vector<float> out(t.num_elements);
  const absl::Status s =
      DequantizeRow(t.type->type, t.data, t.num_elements, out.data());
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

SyntheticLlamaSpec KQuantSized() {
  SyntheticLlamaSpec spec;
  spec.dim = 256;
  spec.n_layers = 2;
  spec.n_heads = 4;
  spec.n_kv_heads = 2;
  spec.ffn_dim = 512;
  spec.vocab_size = 320;
  spec.seed = 42;
  return spec;
}

TEST(SyntheticLlamaTest, LlamaShapesMetadataAndConfig) {
  SyntheticLlamaSpec spec;
  spec.rope_scale = 4.f;
  spec.rope_freq_base = 500000.f;
  auto f = WriteAndOpen(spec, "llama.gguf");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(*f->GetString("general.architecture"), "llama");
  EXPECT_EQ(*f->GetUint("general.alignment"), 32u);
  EXPECT_EQ(*f->GetString("llama.rope.scaling.type"), "linear");
  EXPECT_EQ(*f->GetDouble("llama.rope.scaling.factor"), 4.0);
  EXPECT_EQ(*f->GetUint("llama.rope.dimension_count"), 16u);
  // token_embd, output_norm, output + 9 per layer.
  EXPECT_EQ(f->tensors().size(), 3u + 2 * 9);
  EXPECT_EQ(f->FindTensor("blk.1.attn_k.weight")->shape,
            (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(f->FindTensor("blk.0.ffn_down.weight")->shape,
            (std::vector<int64_t>{128, 64}));
  EXPECT_EQ(f->FindTensor("blk.0.attn_q.bias"), nullptr);

  auto config = ModelConfig::FromGguf(*f);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->dim, 64);
  EXPECT_EQ(config->n_layers, 2);
  EXPECT_EQ(config->n_heads, 4);
  EXPECT_EQ(config->n_kv_heads, 2);
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_EQ(config->ffn_dim, 128);
  EXPECT_EQ(config->vocab_size, 512);
  EXPECT_EQ(config->rope_scale, 4.f);
  EXPECT_EQ(config->rope_freq_base, 500000.f);
  EXPECT_EQ(config->rope_style, RopeStyle::kAdjacent);
  EXPECT_FALSE(config->tied_output);
  EXPECT_FALSE(config->qkv_bias);

  // Weights have the documented scale: std 1/sqrt(fan_in), mean 0.
  const std::vector<float> q =
      Dequantize(*f->FindTensor("blk.0.attn_q.weight"));
  double sum = 0, sumsq = 0;
  for (float v : q) {
    sum += v;
    sumsq += double(v) * v;
  }
  const double mean = sum / q.size();
  const double stddev = std::sqrt(sumsq / q.size() - mean * mean);
  EXPECT_NEAR(stddev, 1 / 8.0, 0.01);
  EXPECT_NEAR(mean, 0, 0.01);
}

TEST(SyntheticLlamaTest, Qwen2TiedWithBiases) {
  SyntheticLlamaSpec spec;
  spec.arch = "qwen2";
  spec.tied_output = true;
  auto f = WriteAndOpen(spec, "qwen2.gguf");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->FindTensor("output.weight"), nullptr);
  EXPECT_EQ(f->FindTensor("blk.1.attn_v.bias")->shape,
            (std::vector<int64_t>{32}));
  auto config = ModelConfig::FromGguf(*f);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "qwen2");
  EXPECT_EQ(config->rope_style, RopeStyle::kNeox);
  EXPECT_TRUE(config->qkv_bias);
  EXPECT_TRUE(config->tied_output);
  EXPECT_EQ(config->rope_scale, 1.f);
}

// The generator draws the same floats for a tensor whatever its type, so the
// F32 file is the reference the quantized files must approximate, and must
// quantize to exactly their bytes.
TEST(SyntheticLlamaTest, QuantizedWeightsMatchTheF32Model) {
  SyntheticLlamaSpec spec = KQuantSized();
  auto ref = WriteAndOpen(spec, "ref_f32.gguf");
  ASSERT_NE(ref, nullptr);
  struct Case {
    GgmlType type;
    double max_rel_rms;  // from quant_ref_test's measurements on Gaussians
  };
  for (const Case& c :
       {Case{GgmlType::kF16, 0.001}, Case{GgmlType::kBF16, 0.005},
        Case{GgmlType::kQ8_0, 0.01}, Case{GgmlType::kQ4_0, 0.1},
        Case{GgmlType::kQ4_K, 0.08}, Case{GgmlType::kQ6_K, 0.021}}) {
    const GgmlTypeTraits& traits = *FindGgmlType(static_cast<uint32_t>(c.type));
    SCOPED_TRACE(std::string(traits.name));
    spec.weight_type = c.type;
    auto f = WriteAndOpen(
        spec, std::string("model_") + std::string(traits.name) + ".gguf");
    ASSERT_NE(f, nullptr);
    ASSERT_TRUE(ModelConfig::FromGguf(*f).ok());
    ASSERT_EQ(f->tensors().size(), ref->tensors().size());
    for (const GgufTensorInfo& t : f->tensors()) {
      const GgufTensorInfo& r = *ref->FindTensor(t.name);
      if (t.shape.size() == 1) {  // norms and biases stay F32
        EXPECT_EQ(t.type->type, GgmlType::kF32) << t.name;
        EXPECT_EQ(0, std::memcmp(t.data, r.data, r.size_bytes));
        continue;
      }
      ASSERT_EQ(t.type->type, c.type) << t.name;
      const std::vector<float> x = Dequantize(r);
      const std::vector<float> y = Dequantize(t);
      double err = 0, norm = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        err += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
        norm += double(x[i]) * x[i];
      }
      EXPECT_LT(std::sqrt(err / norm), c.max_rel_rms) << t.name;
      std::vector<uint8_t> requantized(t.size_bytes);
      ASSERT_TRUE(
          QuantizeRow(c.type, x.data(), t.num_elements, requantized.data())
              .ok());
      EXPECT_EQ(0, std::memcmp(requantized.data(), t.data, t.size_bytes))
          << t.name;
    }
  }
}

TEST(SyntheticLlamaTest, DeterministicAcrossThreadCounts) {
  SyntheticLlamaSpec spec = KQuantSized();
  spec.weight_type = GgmlType::kQ4_K;
  spec.threads = 1;
  ASSERT_TRUE(WriteSyntheticLlama(spec, TempPath("t1.gguf")).ok());
  spec.threads = 3;
  ASSERT_TRUE(WriteSyntheticLlama(spec, TempPath("t3.gguf")).ok());
  spec.seed = 43;
  ASSERT_TRUE(WriteSyntheticLlama(spec, TempPath("seed43.gguf")).ok());
  const std::vector<uint8_t> one = ReadAll(TempPath("t1.gguf"));
  EXPECT_GT(one.size(), 100000u);
  EXPECT_EQ(one, ReadAll(TempPath("t3.gguf")));
  EXPECT_NE(one, ReadAll(TempPath("seed43.gguf")));
}

TEST(SyntheticLlamaTest, RejectsBadSpecs) {
  SyntheticLlamaSpec spec;
  spec.weight_type = GgmlType::kQ4_K;  // dim 64 is not a multiple of 256
  absl::Status s = WriteSyntheticLlama(spec, TempPath("bad.gguf"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("multiples of 256"));
  spec = SyntheticLlamaSpec();
  spec.arch = "gpt2";
  EXPECT_THAT(
      std::string(WriteSyntheticLlama(spec, TempPath("bad.gguf")).message()),
      HasSubstr("unsupported architecture 'gpt2'"));
  spec = SyntheticLlamaSpec();
  spec.n_kv_heads = 3;
  EXPECT_FALSE(WriteSyntheticLlama(spec, TempPath("bad.gguf")).ok());
  spec = SyntheticLlamaSpec();
  spec.weight_type = GgmlType::kQ5_K;
  EXPECT_FALSE(WriteSyntheticLlama(spec, TempPath("bad.gguf")).ok());
  spec = SyntheticLlamaSpec();
  spec.vocab_size = 100;
  EXPECT_FALSE(WriteSyntheticLlama(spec, TempPath("bad.gguf")).ok());
}

TEST(SyntheticLlamaTest, CopiesTokenizerFromAnotherFile) {
  SyntheticLlamaSpec spec;
  spec.tokenizer_from = Shared("tokenizer-vectors/ggml-vocab-llama-spm.gguf");
  spec.vocab_size = 0;
  spec.dim = 32;
  spec.n_heads = 2;
  spec.n_kv_heads = 2;
  spec.ffn_dim = 32;
  spec.n_layers = 1;
  auto f = WriteAndOpen(spec, "spm.gguf");
  ASSERT_NE(f, nullptr);
  auto src = GgufFile::Open(spec.tokenizer_from);
  ASSERT_TRUE(src.ok());
  EXPECT_EQ(*f->GetStringArray("tokenizer.ggml.tokens"),
            *(*src)->GetStringArray("tokenizer.ggml.tokens"));
  EXPECT_EQ(*f->GetFloatArray("tokenizer.ggml.scores"),
            *(*src)->GetFloatArray("tokenizer.ggml.scores"));
  EXPECT_EQ(f->FindTensor("token_embd.weight")->shape,
            (std::vector<int64_t>{32, 32000}));
  spec.vocab_size = 1000;  // fewer rows than tokens
  EXPECT_FALSE(WriteSyntheticLlama(spec, TempPath("spm_small.gguf")).ok());
}

TEST(SyntheticVocabTest, Layout) {
  auto v = MakeSyntheticVocab(2000);
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_EQ(v->tokens.size(), 2000u);
  ASSERT_EQ(v->scores.size(), 2000u);
  ASSERT_EQ(v->token_types.size(), 2000u);
  EXPECT_EQ(v->tokens[0], "<unk>");
  EXPECT_EQ(v->tokens[1], "<s>");
  EXPECT_EQ(v->tokens[2], "</s>");
  EXPECT_THAT(v->token_types, ::testing::Contains(6).Times(256));
  EXPECT_EQ(v->tokens[3], "<0x00>");
  EXPECT_EQ(v->tokens[3 + 0xAB], "<0xAB>");
  EXPECT_EQ(v->token_types[2], 3);
  absl::flat_hash_set<std::string> unique(v->tokens.begin(), v->tokens.end());
  EXPECT_EQ(unique.size(), v->tokens.size());
  // Every prefix of "▁the" is a piece, so the word can be merged together.
  for (const char* p :
       {"\xe2\x96\x81", "\xe2\x96\x81t", "\xe2\x96\x81th", "\xe2\x96\x81the"}) {
    EXPECT_TRUE(unique.contains(p)) << p;
  }
  for (size_t i = 260; i < v->scores.size(); ++i) {
    EXPECT_LT(v->scores[i], v->scores[i - 1]);
    EXPECT_EQ(v->token_types[i], 1);
  }
  EXPECT_EQ(MakeSyntheticVocab(150000)->tokens.size(), 150000u);
  EXPECT_FALSE(MakeSyntheticVocab(299).ok());
}

}  // namespace
}  // namespace sinkserve::engine
