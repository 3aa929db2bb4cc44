#include "engine/gguf/model_config.h"

#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/gguf/gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

using ::testing::HasSubstr;

std::string Shared(const std::string& rel) {
  const char* dir = std::getenv("SINKSERVE_SHARED");
  return std::string(dir ? dir : "../shared") + "/" + rel;
}

TEST(ModelConfigTest, Stories260K) {
  auto f = GgufFile::Open(Shared("models/stories260K.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  auto c = ModelConfig::FromGguf(**f);
  ASSERT_TRUE(c.ok()) << c.status();
  // models/README.md
  EXPECT_EQ(c->architecture, "llama");
  EXPECT_EQ(c->name, "llama");
  EXPECT_EQ(c->dim, 64);
  EXPECT_EQ(c->n_layers, 5);
  EXPECT_EQ(c->n_heads, 8);
  EXPECT_EQ(c->n_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->ffn_dim, 172);
  EXPECT_EQ(c->vocab_size, 512);
  EXPECT_EQ(c->context_length, 2048);
  EXPECT_FLOAT_EQ(c->rms_eps, 1e-5f);
  EXPECT_EQ(c->rope_freq_base, 10000.f);
  EXPECT_EQ(c->rope_scale, 1.f);
  EXPECT_EQ(c->rope_style, RopeStyle::kAdjacent);
  EXPECT_FALSE(c->tied_output);
  EXPECT_FALSE(c->qkv_bias);
}

TEST(ModelConfigTest, OtherArchitecturesAreRejectedByName) {
  auto f = GgufFile::Open(Shared("tokenizer-vectors/ggml-vocab-gpt-2.gguf"));
  ASSERT_TRUE(f.ok());
  auto c = ModelConfig::FromGguf(**f);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.status().message(),
            "unsupported architecture 'gpt2' (supported: llama, qwen2)");
}

TEST(ModelConfigTest, VocabOnlyFileHasNoWeights) {
  auto f =
      GgufFile::Open(Shared("tokenizer-vectors/ggml-vocab-llama-spm.gguf"));
  ASSERT_TRUE(f.ok());
  auto c = ModelConfig::FromGguf(**f);
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("token_embd.weight' is missing"));
}

// A hand-built tiny llama whose metadata and tensor table a test can edit
// before writing. Tensors hold zeros: only shapes matter here.
class TinyLlama {
 public:
  TinyLlama() {
    u32["llama.context_length"] = 256;
    u32["llama.embedding_length"] = 32;
    u32["llama.block_count"] = 2;
    u32["llama.feed_forward_length"] = 48;
    u32["llama.attention.head_count"] = 4;
    u32["llama.attention.head_count_kv"] = 2;
    tensors["token_embd.weight"] = {32, 100};
    tensors["output_norm.weight"] = {32};
    tensors["output.weight"] = {32, 100};
    for (int i = 0; i < 2; ++i) {
      const std::string p = "blk." + std::to_string(i) + ".";
      tensors[p + "attn_norm.weight"] = {32};
      tensors[p + "attn_q.weight"] = {32, 32};
      tensors[p + "attn_k.weight"] = {32, 16};
      tensors[p + "attn_v.weight"] = {32, 16};
      tensors[p + "attn_output.weight"] = {32, 32};
      tensors[p + "ffn_norm.weight"] = {32};
      tensors[p + "ffn_gate.weight"] = {32, 48};
      tensors[p + "ffn_up.weight"] = {32, 48};
      tensors[p + "ffn_down.weight"] = {48, 32};
    }
  }

  absl::StatusOr<ModelConfig> Config() {
    GgufWriter w;
    w.AddString("general.architecture", arch);
    for (const auto& [k, v] : u32) w.AddUint32(k, v);
    for (const auto& [k, v] : f32) w.AddFloat32(k, v);
    for (const auto& [k, v] : str) w.AddString(k, v);
    for (const auto& [name, shape] : tensors) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      w.AddTensor(name, GgmlType::kF32, shape, std::vector<uint8_t>(n * 4));
    }
    path_ =
        ::testing::TempDir() + "/tiny_" + std::to_string(counter_++) + ".gguf";
    const absl::Status s = w.Write(path_);
    if (!s.ok()) return s;
    auto f = GgufFile::Open(path_);
    if (!f.ok()) return f.status();
    file_ = std::move(*f);
    return ModelConfig::FromGguf(*file_);
  }

  std::string arch = "llama";
  std::map<std::string, uint32_t> u32;
  std::map<std::string, float> f32;
  std::map<std::string, std::string> str;
  std::map<std::string, std::vector<int64_t>> tensors;

 private:
  static inline int counter_ = 0;
  std::string path_;
  std::unique_ptr<GgufFile> file_;
};

std::string ErrorOf(TinyLlama& m) {
  auto c = m.Config();
  EXPECT_FALSE(c.ok());
  if (c.ok()) return "";
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(c.status().message());
}

TEST(ModelConfigTest, TinyLlamaDefaults) {
  TinyLlama m;
  m.u32.erase("llama.attention.head_count_kv");
  for (int i = 0; i < 2; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    m.tensors[p + "attn_k.weight"] = {32, 32};
    m.tensors[p + "attn_v.weight"] = {32, 32};
  }
  m.tensors.erase("output.weight");
  auto c = m.Config();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_kv_heads, 4);  // defaults to head_count
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->vocab_size, 100);
  EXPECT_TRUE(c->tied_output);
  EXPECT_EQ(c->rms_eps, 1e-5f);
  EXPECT_EQ(c->rope_freq_base, 10000.f);
  EXPECT_EQ(c->name, "");
}

TEST(ModelConfigTest, RopeScaling) {
  TinyLlama m;
  m.str["llama.rope.scaling.type"] = "linear";
  m.f32["llama.rope.scaling.factor"] = 8.f;
  EXPECT_EQ(m.Config()->rope_scale, 8.f);

  TinyLlama old;
  old.f32["llama.rope.scale_linear"] = 2.f;
  EXPECT_EQ(old.Config()->rope_scale, 2.f);

  TinyLlama none;
  none.str["llama.rope.scaling.type"] = "none";
  EXPECT_EQ(none.Config()->rope_scale, 1.f);

  TinyLlama yarn;
  yarn.str["llama.rope.scaling.type"] = "yarn";
  EXPECT_THAT(ErrorOf(yarn), HasSubstr("RoPE scaling type 'yarn'"));

  TinyLlama zero;
  zero.str["llama.rope.scaling.type"] = "linear";
  zero.f32["llama.rope.scaling.factor"] = 0.f;
  EXPECT_THAT(ErrorOf(zero), HasSubstr("not a positive number"));
}

TEST(ModelConfigTest, ExplicitKeyLength) {
  TinyLlama m;  // 4 heads of 16 in a 32-wide model
  m.u32["llama.attention.key_length"] = 16;
  m.u32["llama.attention.value_length"] = 16;
  for (int i = 0; i < 2; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    m.tensors[p + "attn_q.weight"] = {32, 64};
    m.tensors[p + "attn_k.weight"] = {32, 32};
    m.tensors[p + "attn_v.weight"] = {32, 32};
    m.tensors[p + "attn_output.weight"] = {64, 32};
  }
  auto c = m.Config();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 16);
}

TEST(ModelConfigTest, ShapeErrorsNameTheTensor) {
  TinyLlama m;
  m.tensors["blk.1.attn_k.weight"] = {32, 32};
  EXPECT_EQ(
      ErrorOf(m),
      "model config: tensor 'blk.1.attn_k.weight' has shape {32, 32}, expected "
      "{32, 16} (dim x n_kv_heads*head_dim)");

  TinyLlama missing;
  missing.tensors.erase("blk.0.ffn_up.weight");
  EXPECT_THAT(ErrorOf(missing),
              HasSubstr("tensor 'blk.0.ffn_up.weight' is missing"));

  TinyLlama extra;
  extra.tensors["blk.2.attn_norm.weight"] = {32};
  EXPECT_THAT(ErrorOf(extra),
              HasSubstr("unexpected tensor 'blk.2.attn_norm.weight'"));

  TinyLlama llama31;
  llama31.tensors["rope_freqs.weight"] = {4};
  EXPECT_THAT(ErrorOf(llama31),
              HasSubstr("RoPE frequency factors are not supported"));

  TinyLlama embd;
  embd.tensors["token_embd.weight"] = {31, 100};
  EXPECT_THAT(ErrorOf(embd),
              HasSubstr("'token_embd.weight' has shape {31, 100}"));

  TinyLlama partial_bias;  // biases on layer 1 only
  partial_bias.tensors["blk.1.attn_q.bias"] = {32};
  EXPECT_THAT(ErrorOf(partial_bias),
              HasSubstr("unexpected tensor 'blk.1.attn_q.bias'"));
}

TEST(ModelConfigTest, HyperparameterErrors) {
  TinyLlama no_dim;
  no_dim.u32.erase("llama.embedding_length");
  EXPECT_THAT(ErrorOf(no_dim),
              HasSubstr("'llama.embedding_length' is missing"));

  TinyLlama zero_heads;
  zero_heads.u32["llama.attention.head_count"] = 0;
  EXPECT_THAT(ErrorOf(zero_heads), HasSubstr("outside [1,"));

  TinyLlama gqa;
  gqa.u32["llama.attention.head_count_kv"] = 3;
  EXPECT_THAT(ErrorOf(gqa), HasSubstr("not a multiple of head_count_kv 3"));

  TinyLlama ragged;
  ragged.u32["llama.attention.head_count"] = 3;
  ragged.u32["llama.attention.head_count_kv"] = 3;
  EXPECT_THAT(ErrorOf(ragged), HasSubstr("not a multiple of head_count 3"));

  TinyLlama partial_rope;
  partial_rope.u32["llama.rope.dimension_count"] = 4;
  EXPECT_THAT(ErrorOf(partial_rope), HasSubstr("partial RoPE"));

  TinyLlama wrong_kind;
  wrong_kind.str["llama.block_count"] = "two";
  wrong_kind.u32.erase("llama.block_count");
  EXPECT_THAT(ErrorOf(wrong_kind), HasSubstr("llama.block_count"));

  // Found by gguf_fuzz: a header claiming a million layers is refused
  // before a table of ten million expected tensors is built.
  TinyLlama deep;
  deep.u32["llama.block_count"] = 1000000;
  EXPECT_THAT(ErrorOf(deep), HasSubstr("block_count 1000000 but the file holds only"));

  TinyLlama mistral;  // Mistral files say "llama" too; others are refused
  mistral.arch = "mistral";
  EXPECT_THAT(ErrorOf(mistral),
              HasSubstr("unsupported architecture 'mistral'"));
}

TEST(ModelConfigTest, Qwen2UsesNeoxRopeAndBiases) {
  TinyLlama m;
  m.arch = "qwen2";
  std::map<std::string, uint32_t> renamed;
  for (const auto& [k, v] : m.u32) renamed["qwen2" + k.substr(5)] = v;
  m.u32 = renamed;
  for (int i = 0; i < 2; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    m.tensors[p + "attn_q.bias"] = {32};
    m.tensors[p + "attn_k.bias"] = {16};
    m.tensors[p + "attn_v.bias"] = {16};
  }
  auto c = m.Config();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_style, RopeStyle::kNeox);
  EXPECT_TRUE(c->qkv_bias);
  m.tensors["blk.1.attn_k.bias"] = {32};
  EXPECT_THAT(ErrorOf(m),
              HasSubstr("'blk.1.attn_k.bias' has shape {32}, expected {16}"));
}

}  // namespace
}  // namespace sinkserve::engine
