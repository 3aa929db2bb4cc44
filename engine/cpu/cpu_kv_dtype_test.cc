// F16 / BF16 KV storage in the CPU backend: rounding on write, exact
// snapshots, and logits close to F32 KV by the formats' precision.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend_test_util.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/cpu_kv_storage.h"
#include "engine/gguf/fp16.h"
#include "engine/gguf/gguf_writer.h"
#include "engine/cpu/host_buffer.h"
#include "engine/gguf/model_weights.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

// Unit roundoff of the format: half the gap between 1 and the next value.
double UnitRoundoff(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF32:
      return std::ldexp(1.0, -24);
    case KvDtype::kF16:
      return std::ldexp(1.0, -11);  // 10 stored mantissa bits
    case KvDtype::kBF16:
      return std::ldexp(1.0, -8);  // 7 stored mantissa bits
  }
  return 1;
}

TEST(KvDtypeTest, ParseIsTheInverseOfName) {
  for (KvDtype dtype : {KvDtype::kF32, KvDtype::kF16, KvDtype::kBF16}) {
    auto parsed = ParseKvDtype(KvDtypeName(dtype));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, dtype);
  }
  for (const char* bad : {"", "F16", "fp16", "q8_0", "f16 "}) {
    auto parsed = ParseKvDtype(bad);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// Write rounds each element once, to nearest-even; Read widens exactly.
TEST(CpuKvStorageTest, WriteRoundsToTheDtypeReadWidensExactly) {
  const int64_t kv_dim = 37;
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.f, 3.f);
  for (KvDtype dtype : {KvDtype::kF32, KvDtype::kF16, KvDtype::kBF16}) {
    auto kv = CpuKvStorage::Create(2, kv_dim, 5, dtype);
    ASSERT_TRUE(kv.ok()) << kv.status();
    EXPECT_EQ((*kv)->dtype(), dtype);
    std::vector<float> k(kv_dim), v(kv_dim), k2(kv_dim), v2(kv_dim);
    for (float& x : k) x = dist(rng);
    for (float& x : v) x = dist(rng);
    k[0] = 1e-6f;  // an F16 subnormal
    v[0] = 7e4f;   // past the largest F16: infinity
    (*kv)->Write(1, 3, k.data(), v.data());
    (*kv)->Read(1, 3, k2.data(), v2.data());
    for (int64_t c = 0; c < kv_dim; ++c) {
      float want_k = k[c], want_v = v[c];
      if (dtype == KvDtype::kF16) {
        want_k = HalfToFloat(FloatToHalf(k[c]));
        want_v = HalfToFloat(FloatToHalf(v[c]));
      } else if (dtype == KvDtype::kBF16) {
        want_k = Bf16ToFloat(FloatToBf16(k[c]));
        want_v = Bf16ToFloat(FloatToBf16(v[c]));
      }
      EXPECT_EQ(FloatBits(k2[c]), FloatBits(want_k)) << KvDtypeName(dtype) << " c=" << c;
      EXPECT_EQ(FloatBits(v2[c]), FloatBits(want_v)) << KvDtypeName(dtype) << " c=" << c;
    }
  }
}

// ExportSlots / ImportSlots against Write / Read, slot by slot: shuffled
// slot lists whose lengths are and are not multiples of the transpose block,
// a storage big enough for huge pages, every dtype; fresh storage reads zero.
TEST(CpuKvStorageTest, ExportImportMatchWriteReadForAnySlotOrder) {
  const int64_t n_layers = 3, kv_dim = 40;
  const int capacity = 4099;  // > 2 MiB per buffer in F32
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.f, 2.f);
  for (KvDtype dtype : {KvDtype::kF32, KvDtype::kF16, KvDtype::kBF16}) {
    auto src = CpuKvStorage::Create(n_layers, kv_dim, capacity, dtype);
    auto dst = CpuKvStorage::Create(n_layers, kv_dim, capacity, dtype);
    ASSERT_TRUE(src.ok() && dst.ok());
    std::vector<float> k(kv_dim), v(kv_dim), k2(kv_dim), v2(kv_dim);
    (*dst)->Read(2, capacity - 1, k2.data(), v2.data());
    EXPECT_EQ(k2, std::vector<float>(kv_dim, 0.f)) << "new storage is not zero";
    std::vector<int32_t> slots(capacity);
    for (int i = 0; i < capacity; ++i) slots[i] = i;
    std::shuffle(slots.begin(), slots.end(), rng);
    for (int32_t slot : slots) {
      for (int64_t layer = 0; layer < n_layers; ++layer) {
        for (float& x : k) x = dist(rng);
        for (float& x : v) x = dist(rng);
        (*src)->Write(layer, slot, k.data(), v.data());
      }
    }
    for (size_t n : {size_t{1}, size_t{15}, size_t{16}, size_t{33}, slots.size()}) {
      const absl::Span<const int32_t> some = absl::MakeConstSpan(slots).first(n);
      std::string bytes;
      ASSERT_TRUE((*src)->ExportSlots(some, &bytes).ok());
      ASSERT_EQ(bytes.size(), n_layers * 2 * n * kv_dim * KvDtypeBytes(dtype));
      // The layout is (layer, {K, V}, i, kv_dim): check one row directly.
      (*src)->Read(n_layers - 1, some[n - 1], k.data(), v.data());
      const size_t row = kv_dim * KvDtypeBytes(dtype);
      const size_t last_v = ((n_layers - 1) * 2 + 1) * n * row + (n - 1) * row;
      if (dtype == KvDtype::kF32) {
        EXPECT_EQ(std::memcmp(bytes.data() + last_v, v.data(), row), 0);
      }
      // Into other slots (reversed), then back out: the same rows.
      std::vector<int32_t> other(some.rbegin(), some.rend());
      ASSERT_TRUE((*dst)->ImportSlots(other, bytes).ok());
      for (size_t i = 0; i < n; ++i) {
        for (int64_t layer = 0; layer < n_layers; ++layer) {
          (*src)->Read(layer, some[i], k.data(), v.data());
          (*dst)->Read(layer, other[i], k2.data(), v2.data());
          ASSERT_EQ(k, k2) << KvDtypeName(dtype) << " n=" << n << " i=" << i;
          ASSERT_EQ(v, v2) << KvDtypeName(dtype) << " n=" << n << " i=" << i;
        }
      }
    }
  }
}

TEST(HostBufferTest, ZeroedMovesAndFrees) {
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{4097}, size_t{5} << 20}) {
    auto buffer = HostBuffer::Zeroed(bytes);
    ASSERT_TRUE(buffer.ok()) << buffer.status();
    EXPECT_EQ(buffer->size(), bytes);
    const unsigned char* p = buffer->as<unsigned char>();
    for (size_t i = 0; i < bytes; i += 511) ASSERT_EQ(p[i], 0) << i;
    if (bytes > 0) buffer->as<unsigned char>()[bytes - 1] = 7;
    HostBuffer moved = *std::move(buffer);
    EXPECT_EQ(moved.size(), bytes);
    if (bytes > 0) {
      EXPECT_EQ(moved.as<unsigned char>()[bytes - 1], 7);
    }
  }
  EXPECT_EQ(HostBuffer::Zeroed(~size_t{0}).status().code(),
            absl::StatusCode::kResourceExhausted);
}

struct ModelCase {
  std::string name;
  SyntheticLlamaSpec spec;
};

std::vector<ModelCase> Cases() {
  SyntheticLlamaSpec llama;  // GQA 4/2, untied, adjacent RoPE
  llama.vocab_size = 320;
  llama.threads = 1;
  SyntheticLlamaSpec qwen = llama;  // NeoX RoPE, q/k/v biases, tied
  qwen.arch = "qwen2";
  qwen.tied_output = true;
  qwen.rope_freq_base = 1e6f;
  return {{"llama", llama}, {"qwen2", qwen}};
}

const std::vector<int32_t> kTokens = {1,  17, 203, 5,  99, 42,  311, 8,  64, 150, 7,
                                      260, 3, 77,  19, 101, 250, 33, 4,  90, 12, 300};

class KvDtypeBackendTest : public ::testing::TestWithParam<ModelCase> {
 protected:
  void SetUp() override {
    const std::string path =
        ::testing::TempDir() + "/cpu_kv_dtype_test_" + GetParam().name + ".gguf";
    ASSERT_TRUE(WriteSyntheticLlama(GetParam().spec, path).ok());
    auto weights = ModelWeights::Load(path);
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = *weights;
  }

  std::unique_ptr<Backend> NewBackend(KvDtype dtype) {
    CpuBackendOptions options;
    options.threads = 2;
    options.kv_dtype = dtype;
    auto backend = NewCpuBackend(weights_, options);
    EXPECT_TRUE(backend.ok()) << backend.status();
    return std::move(*backend);
  }

  // Logits of every token: a prefill of the first half, then one decode
  // step per token, so later rows read many cached (rounded) cells.
  std::vector<float> Run(Backend* backend, KvStorage* kv) {
    const int32_t n = kTokens.size(), half = n / 2;
    std::vector<float> all;
    StepResult result;
    const std::vector<int32_t> first = Range(0, half);
    EXPECT_TRUE(backend
                    ->Forward({{kv, {}, {}, absl::MakeConstSpan(kTokens).subspan(0, half),
                                first, first, LogitsMode::kAll}},
                              &result)
                    .ok());
    all = result.logits[0];
    for (int32_t i = half; i < n; ++i) {
      const std::vector<int32_t> ctx = Range(0, i);
      const int32_t slot[1] = {i};
      EXPECT_TRUE(backend
                      ->Forward({{kv, ctx, ctx, {&kTokens[i], 1}, slot, slot,
                                  LogitsMode::kLast}},
                                &result)
                      .ok());
      all.insert(all.end(), result.logits[0].begin(), result.logits[0].end());
    }
    return all;
  }

  std::shared_ptr<const ModelWeights> weights_;
};

// Each cached element carries a relative error of at most u (the format's
// unit roundoff). Scores q.k and the value mix are sums whose relative error
// stays O(u); every layer adds its own O(u) and passes on the previous ones,
// so logits may drift by a few u per layer. The bound 4 u n_layers leaves
// room for that (measured: under 1 u in all on these models, 0.7-0.9 u) and
// is still orders of magnitude below what a wrong conversion (e.g. widening
// F16 bits as BF16, or a missed slot) gives, which scrambles the logits.
TEST_P(KvDtypeBackendTest, HalfKvLogitsStayWithinTheFormatsPrecision) {
  auto f32 = NewBackend(KvDtype::kF32);
  auto kv32 = f32->NewKvStorage(32);
  ASSERT_TRUE(kv32.ok());
  const std::vector<float> reference = Run(f32.get(), kv32->get());
  const int64_t layers = weights_->config().n_layers;
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kBF16}) {
    auto backend = NewBackend(dtype);
    auto kv = backend->NewKvStorage(32);
    ASSERT_TRUE(kv.ok());
    EXPECT_EQ((*kv)->dtype(), dtype);
    const std::vector<float> logits = Run(backend.get(), kv->get());
    const double err = MaxRelError(logits, reference);
    const double bound = 4 * UnitRoundoff(dtype) * layers;
    EXPECT_LT(err, bound) << KvDtypeName(dtype);
    // The rows really were rounded: logits are not F32's bits.
    EXPECT_GT(err, 0) << KvDtypeName(dtype);
    std::cerr << KvDtypeName(dtype) << " KV: logits rel. error " << err << " = "
              << err / UnitRoundoff(dtype) << " u (bound " << bound << ")\n";
  }
}

TEST_P(KvDtypeBackendTest, HalfKvMoveExportImportAreBitExact) {
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kBF16}) {
    SCOPED_TRACE(std::string(KvDtypeName(dtype)));
    auto backend = NewBackend(dtype);
    auto make = [&](int capacity) {
      auto kv = backend->NewKvStorage(capacity);
      EXPECT_TRUE(kv.ok());
      return std::move(*kv);
    };
    const int32_t n = 11;
    auto kv = make(32);
    StepResult result;
    const std::vector<int32_t> front = Range(0, n);
    ASSERT_TRUE(backend
                    ->Forward({{kv.get(), {}, {}, absl::MakeConstSpan(kTokens).subspan(0, n),
                                front, front, LogitsMode::kNone}},
                              &result)
                    .ok());
    // Decode one token after the cached cells, from `slots`, into slot `to`.
    auto decode = [&](KvStorage* storage, const std::vector<int32_t>& slots, int32_t to) {
      const int32_t slot[1] = {to}, position[1] = {n};
      StepResult r;
      EXPECT_TRUE(backend
                      ->Forward({{storage, slots, front, {&kTokens[n], 1}, slot, position,
                                  LogitsMode::kLast}},
                                &r)
                      .ok());
      return r.logits[0];
    };
    const std::vector<float> reference = decode(kv.get(), front, n);

    // Export in the storage dtype: 2 bytes per element.
    std::string bytes;
    ASSERT_TRUE(kv->ExportSlots(front, &bytes).ok());
    const auto& config = weights_->config();
    EXPECT_EQ(bytes.size(), static_cast<size_t>(config.n_layers) * 2 * n *
                                config.n_kv_heads * config.head_dim * 2);
    // Import into fresh storage at other, scattered slots: same bytes back,
    // same logits bit for bit.
    auto other = make(40);
    std::vector<int32_t> scattered;
    for (int32_t i = 0; i < n; ++i) scattered.push_back(3 * i + 1);
    ASSERT_TRUE(other->ImportSlots(scattered, bytes).ok());
    std::string again;
    ASSERT_TRUE(other->ExportSlots(scattered, &again).ok());
    EXPECT_EQ(again, bytes);
    EXPECT_EQ(decode(other.get(), scattered, 39), reference);

    // Moves copy rows as stored.
    std::vector<std::pair<int32_t, int32_t>> moves;
    for (int32_t i = 0; i < n; ++i) moves.emplace_back(i, 20 + i);
    ASSERT_TRUE(kv->MoveSlots(moves).ok());
    const std::vector<int32_t> moved = Range(20, 20 + n);
    ASSERT_TRUE(kv->ExportSlots(moved, &again).ok());
    EXPECT_EQ(again, bytes);
    EXPECT_EQ(decode(kv.get(), moved, 0), reference);

    // F32-sized bytes do not fit a half-precision storage.
    EXPECT_FALSE(other->ImportSlots(scattered, bytes + bytes).ok());
    EXPECT_FALSE(other->ImportSlots(scattered, bytes.substr(2)).ok());
  }
}

INSTANTIATE_TEST_SUITE_P(Models, KvDtypeBackendTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return info.param.name; });

// Greedy tokens of stories260K from BOS, one decode step per token.
std::vector<int32_t> Greedy(const std::shared_ptr<const ModelWeights>& weights,
                            KvDtype dtype, int n_tokens) {
  CpuBackendOptions options;
  options.threads = 2;
  options.kv_dtype = dtype;
  auto backend = NewCpuBackend(weights, options);
  EXPECT_TRUE(backend.ok());
  auto kv = (*backend)->NewKvStorage(n_tokens + 1);
  EXPECT_TRUE(kv.ok());
  std::vector<int32_t> ids = {1};  // BOS
  StepResult result;
  for (int32_t i = 0; i < n_tokens; ++i) {
    const std::vector<int32_t> ctx = Range(0, i);
    const int32_t slot[1] = {i};
    EXPECT_TRUE((*backend)
                    ->Forward({{kv->get(), ctx, ctx, {&ids[i], 1}, slot, slot,
                                LogitsMode::kLast}},
                              &result)
                    .ok());
    const auto& logits = result.logits[0];
    ids.push_back(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  return std::vector<int32_t>(ids.begin() + 1, ids.end());
}

TEST(KvDtypeStoriesTest, F16KvGreedyTokensEqualF32Kv) {
  const char* shared = std::getenv("SINKSERVE_SHARED");
  if (shared == nullptr) GTEST_SKIP() << "SINKSERVE_SHARED not set";
  auto weights = ModelWeights::Load(std::string(shared) + "/models/stories260K.gguf");
  ASSERT_TRUE(weights.ok()) << weights.status();
  const int kTokensToCompare = 100;
  const std::vector<int32_t> f32 = Greedy(*weights, KvDtype::kF32, kTokensToCompare);
  const std::vector<int32_t> f16 = Greedy(*weights, KvDtype::kF16, kTokensToCompare);
  EXPECT_EQ(f16, f32);
  // BF16 keeps 3 fewer mantissa bits; a near-tie may flip. Reported, not asserted.
  const std::vector<int32_t> bf16 = Greedy(*weights, KvDtype::kBF16, kTokensToCompare);
  const auto diverge = std::mismatch(bf16.begin(), bf16.end(), f32.begin());
  std::cerr << "bf16 KV greedy tokens equal f32's for the first "
            << (diverge.first - bf16.begin()) << " of " << kTokensToCompare << "\n";
}

}  // namespace
}  // namespace sinkserve::engine
