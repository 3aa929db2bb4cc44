// WriteSyntheticLlama: random llama / qwen2 models, streamed to disk.
//
// Every row of every tensor is drawn from its own generator, seeded from
// (spec.seed, tensor name, row), so the file depends only on the spec: not on
// the number of threads, nor on the order tensors are generated in.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/gguf/gguf_writer.h"
#include "engine/gguf/quant_ref.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t s = a ^ (b * 0xd1342543de82ef95ull);
  return SplitMix64(&s);
}

uint64_t HashName(std::string_view name) {  // FNV-1a
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

constexpr double kTwoPi = 6.283185307179586476925286766559;

// xoshiro256+ with Box-Muller: portable (no std::normal_distribution, whose
// output differs between standard libraries) and fast enough for 7B models.
class NormalRng {
 public:
  explicit NormalRng(uint64_t seed) {
    for (uint64_t& w : s_) w = SplitMix64(&seed);
  }

  float Next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    // u1 in (0, 1] so the log is finite.
    const double u1 = static_cast<double>((NextBits() >> 11) + 1) * 0x1.0p-53;
    const double u2 = static_cast<double>(NextBits() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = static_cast<float>(r * std::sin(kTwoPi * u2));
    has_spare_ = true;
    return static_cast<float>(r * std::cos(kTwoPi * u2));
  }

 private:
  uint64_t NextBits() {
    const uint64_t result = s_[0] + s_[3];
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = (s_[3] << 45) | (s_[3] >> 19);
    return result;
  }

  uint64_t s_[4];
  bool has_spare_ = false;
  float spare_ = 0.f;
};

// How a tensor's values are drawn: x = mean + stddev * N(0, 1).
struct Init {
  float mean;
  float stddev;
};

constexpr size_t kBatchBytes = 16 << 20;

// Streams a tensor of `rows` rows of `ne0` values, generated and quantized
// in parallel batches of rows.
absl::Status FillTensor(GgmlType type, int64_t ne0, int64_t rows, Init init,
                        uint64_t seed, int threads,
                        const GgufWriter::ByteSink& sink) {
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(type));
  const int64_t row_bytes = GgmlRowBytes(*traits, ne0);
  const int64_t batch_rows = std::max<int64_t>(
      1, static_cast<int64_t>(kBatchBytes) / std::max<int64_t>(1, row_bytes));
  std::vector<uint8_t> buffer(std::min(batch_rows, rows) * row_bytes);
  for (int64_t start = 0; start < rows; start += batch_rows) {
    const int64_t n = std::min(batch_rows, rows - start);
    const int64_t n_workers =
        std::max<int64_t>(1, std::min<int64_t>(threads, n));
    std::vector<absl::Status> results(n_workers);
    auto work = [&](int64_t w) {
      std::vector<float> values(ne0);
      for (int64_t r = w; r < n; r += n_workers) {
        NormalRng rng(Mix(seed, static_cast<uint64_t>(start + r)));
        for (float& v : values) v = init.mean + init.stddev * rng.Next();
        absl::Status s = QuantizeRow(type, values.data(), ne0,
                                     buffer.data() + r * row_bytes);
        if (!s.ok()) {
          results[w] = s;
          return;
        }
      }
    };
    if (n_workers == 1) {
      work(0);
    } else {
      std::vector<std::thread> pool;
      for (int64_t w = 0; w < n_workers; ++w) pool.emplace_back(work, w);
      for (std::thread& t : pool) t.join();
    }
    for (const absl::Status& s : results) SINKSERVE_RETURN_IF_ERROR(s);
    SINKSERVE_RETURN_IF_ERROR(sink(buffer.data(), n * row_bytes));
  }
  return absl::OkStatus();
}

// llama.cpp's llama_ftype for a file whose matrices are all `type`.
uint32_t FileType(GgmlType type) {
  switch (type) {
    case GgmlType::kF16:
      return 1;
    case GgmlType::kQ4_0:
      return 2;
    case GgmlType::kQ8_0:
      return 7;
    case GgmlType::kQ4_K:
      return 14;  // Q4_K_S
    case GgmlType::kQ6_K:
      return 18;
    case GgmlType::kBF16:
      return 32;
    default:
      return 0;  // all F32
  }
}

absl::Status CheckSpec(const SyntheticLlamaSpec& s) {
  auto bad = [](auto... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat("synthetic model: ", parts...));
  };
  if (s.arch != "llama" && s.arch != "qwen2") {
    return bad("unsupported architecture '", s.arch,
               "' (supported: llama, qwen2)");
  }
  constexpr int64_t kMaxDim = int64_t{1} << 20;
  for (const auto& [name, v] : {std::pair<const char*, int64_t>{"dim", s.dim},
                                {"n_layers", s.n_layers},
                                {"n_heads", s.n_heads},
                                {"n_kv_heads", s.n_kv_heads},
                                {"ffn_dim", s.ffn_dim},
                                {"context_length", s.context_length}}) {
    if (v <= 0 || v > kMaxDim)
      return bad(name, " ", v, " is outside [1, ", kMaxDim, "]");
  }
  if (s.dim % s.n_heads != 0 || (s.dim / s.n_heads) % 2 != 0) {
    return bad("dim ", s.dim, " must be n_heads (", s.n_heads,
               ") times an even head size");
  }
  if (s.n_heads % s.n_kv_heads != 0) {
    return bad("n_heads ", s.n_heads, " is not a multiple of n_kv_heads ",
               s.n_kv_heads);
  }
  if (!(s.rope_scale > 0) || !(s.rms_eps > 0) || !(s.rope_freq_base > 0) ||
      !(s.weight_scale > 0) || !std::isfinite(s.weight_scale)) {
    return bad(
        "rope_scale, rms_eps, rope_freq_base and weight_scale must be > 0");
  }
  if (!HasQuantRef(s.weight_type)) {
    return bad("weight type ", static_cast<uint32_t>(s.weight_type),
               " is not one of f32, f16, bf16, q8_0, q4_0, q4_K, q6_K");
  }
  const GgmlTypeTraits& t = *FindGgmlType(static_cast<uint32_t>(s.weight_type));
  for (const auto& [name, v] : {std::pair<const char*, int64_t>{"dim", s.dim},
                                {"ffn_dim", s.ffn_dim}}) {
    if (v % t.block_size != 0) {
      return bad("weight type ", std::string(t.name),
                 " needs rows that are multiples of ", t.block_size, "; ", name,
                 " ", v, " is not");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteSyntheticLlama(const SyntheticLlamaSpec& spec,
                                 const std::string& path) {
  SINKSERVE_RETURN_IF_ERROR(CheckSpec(spec));
  const std::string& a = spec.arch;
  const int64_t head_dim = spec.dim / spec.n_heads;
  const bool qkv_bias = spec.qkv_bias.value_or(spec.arch == "qwen2");
  int threads = spec.threads;
  if (threads <= 0) {
    threads = static_cast<int>(
        std::min(16u, std::max(1u, std::thread::hardware_concurrency())));
  }

  GgufWriter w;
  w.AddString("general.architecture", a);
  w.AddString("general.name", spec.name);
  w.AddUint32("general.alignment", 32);
  w.AddUint32("general.file_type", FileType(spec.weight_type));
  w.AddUint32(a + ".context_length",
              static_cast<uint32_t>(spec.context_length));
  w.AddUint32(a + ".embedding_length", static_cast<uint32_t>(spec.dim));
  w.AddUint32(a + ".block_count", static_cast<uint32_t>(spec.n_layers));
  w.AddUint32(a + ".feed_forward_length", static_cast<uint32_t>(spec.ffn_dim));
  w.AddUint32(a + ".attention.head_count", static_cast<uint32_t>(spec.n_heads));
  w.AddUint32(a + ".attention.head_count_kv",
              static_cast<uint32_t>(spec.n_kv_heads));
  w.AddFloat32(a + ".attention.layer_norm_rms_epsilon", spec.rms_eps);
  w.AddFloat32(a + ".rope.freq_base", spec.rope_freq_base);
  w.AddUint32(a + ".rope.dimension_count", static_cast<uint32_t>(head_dim));
  if (spec.rope_scale != 1.f) {
    w.AddString(a + ".rope.scaling.type", "linear");
    w.AddFloat32(a + ".rope.scaling.factor", spec.rope_scale);
  }

  int64_t vocab_size = spec.vocab_size;
  if (!spec.tokenizer_from.empty()) {
    SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> source,
                               GgufFile::Open(spec.tokenizer_from));
    SINKSERVE_ASSIGN_OR_RETURN(std::vector<std::string_view> tokens,
                               source->GetStringArray("tokenizer.ggml.tokens"));
    const int64_t n_tokens = static_cast<int64_t>(tokens.size());
    if (vocab_size == 0) vocab_size = n_tokens;
    if (vocab_size < n_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "synthetic model: vocab size ", vocab_size, " is smaller than the ",
          n_tokens, " tokens of ", spec.tokenizer_from));
    }
    for (const GgufKv& kv : source->metadata()) {
      if (kv.key.substr(0, 10) == "tokenizer.") w.AddValue(kv.key, kv.value);
    }
  } else {
    SINKSERVE_ASSIGN_OR_RETURN(SyntheticVocab vocab,
                               MakeSyntheticVocab(vocab_size));
    AddSyntheticTokenizer(vocab, &w);
  }
  if (vocab_size <= 0 || vocab_size > (int64_t{1} << 22)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "synthetic model: vocab size ", vocab_size, " is out of range"));
  }

  const GgmlType wt = spec.weight_type;
  const uint64_t seed = spec.seed;
  auto add = [&](const std::string& name, GgmlType type,
                 std::vector<int64_t> shape, Init init) {
    const int64_t ne0 = shape[0];
    const int64_t rows = shape.size() > 1 ? shape[1] : 1;
    const uint64_t tensor_seed = Mix(seed, HashName(name));
    w.AddTensor(
        name, type, std::move(shape), [=](const GgufWriter::ByteSink& sink) {
          return FillTensor(type, ne0, rows, init, tensor_seed, threads, sink);
        });
  };
  auto matrix = [&](const std::string& name, int64_t in, int64_t out) {
    add(name, wt, {in, out},
        {0.f, spec.weight_scale / std::sqrt(static_cast<float>(in))});
  };
  auto norm = [&](const std::string& name) {
    add(name, GgmlType::kF32, {spec.dim}, {1.f, 0.05f});
  };
  auto bias = [&](const std::string& name, int64_t n) {
    add(name, GgmlType::kF32, {n}, {0.f, 0.1f * spec.weight_scale});
  };

  const int64_t q_dim = spec.n_heads * head_dim;
  const int64_t kv_dim = spec.n_kv_heads * head_dim;
  matrix("token_embd.weight", spec.dim, vocab_size);
  norm("output_norm.weight");
  if (!spec.tied_output) matrix("output.weight", spec.dim, vocab_size);
  for (int64_t i = 0; i < spec.n_layers; ++i) {
    const std::string p = absl::StrCat("blk.", i, ".");
    norm(p + "attn_norm.weight");
    matrix(p + "attn_q.weight", spec.dim, q_dim);
    matrix(p + "attn_k.weight", spec.dim, kv_dim);
    matrix(p + "attn_v.weight", spec.dim, kv_dim);
    if (qkv_bias) {
      bias(p + "attn_q.bias", q_dim);
      bias(p + "attn_k.bias", kv_dim);
      bias(p + "attn_v.bias", kv_dim);
    }
    matrix(p + "attn_output.weight", q_dim, spec.dim);
    norm(p + "ffn_norm.weight");
    matrix(p + "ffn_gate.weight", spec.dim, spec.ffn_dim);
    matrix(p + "ffn_up.weight", spec.dim, spec.ffn_dim);
    matrix(p + "ffn_down.weight", spec.ffn_dim, spec.dim);
  }
  if (spec.progress) w.set_progress(spec.progress);
  return w.Write(path);
}

}  // namespace sinkserve::engine
