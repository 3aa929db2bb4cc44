#include "kernels/backend_registry.h"

#include <cstdlib>
#include <string>

#include "engine/gguf/gguf_writer.h"
#include "gtest/gtest.h"

namespace sinkserve::kernels {
namespace {

std::shared_ptr<const engine::ModelWeights> TinyModel() {
  engine::SyntheticLlamaSpec spec;
  spec.vocab_size = 320;
  spec.threads = 1;
  const std::string path = ::testing::TempDir() + "/backend_registry_test.gguf";
  absl::Status written = engine::WriteSyntheticLlama(spec, path);
  EXPECT_TRUE(written.ok()) << written;
  auto weights = engine::ModelWeights::Load(path);
  EXPECT_TRUE(weights.ok()) << weights.status();
  return weights.ok() ? *weights : nullptr;
}

TEST(BackendRegistryTest, CpuByName) {
  auto backend = MakeBackend("cpu", TinyModel(), {});
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->name(), "cpu");
}

TEST(BackendRegistryTest, AutoAlwaysGivesABackend) {
  auto backend = MakeBackend("auto", TinyModel(), {});
  ASSERT_TRUE(backend.ok()) << backend.status();
  // Whichever it chose, it runs the same model.
  EXPECT_EQ((*backend)->config().vocab_size, 320);
}

TEST(BackendRegistryTest, CudaWithoutCudaIsAClearError) {
  auto backend = MakeBackend("cuda", TinyModel(), {});
  if (CudaCompiledIn() && backend.ok()) GTEST_SKIP() << "a GPU is present";
  ASSERT_FALSE(backend.ok());
  if (CudaCompiledIn()) {
    EXPECT_TRUE(absl::IsUnavailable(backend.status())) << backend.status();
  } else {
    EXPECT_TRUE(absl::IsFailedPrecondition(backend.status())) << backend.status();
  }
}

TEST(BackendRegistryTest, UnknownNameAndNullWeightsAreInvalid) {
  EXPECT_TRUE(absl::IsInvalidArgument(MakeBackend("tpu", TinyModel(), {}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(MakeBackend("cpu", nullptr, {}).status()));
}

TEST(BackendRegistryTest, KvDtypeReachesTheCpuBackend) {
  BackendOptions options;
  options.kv_dtype = engine::KvDtype::kBF16;
  auto backend = MakeBackend("cpu", TinyModel(), options);
  ASSERT_TRUE(backend.ok()) << backend.status();
  auto kv = (*backend)->NewKvStorage(8);
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_EQ((*kv)->dtype(), engine::KvDtype::kBF16);
}

}  // namespace
}  // namespace sinkserve::kernels
