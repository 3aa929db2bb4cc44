// Tokenizer encode speed on a megabyte of text (Google Benchmark): the llama
// SentencePiece vocab on pseudo-random words and on one unbroken 1 MB word
// (the worst case: a million-entry merge heap), and the byte-level BPE vocabs
// on their test inputs repeated to 1 MB plus a 64 KiB unbroken piece.
// Reports bytes/s. Needs the shared tokenizer vectors:
//
//   SINKSERVE_SHARED=/path/to/shared tokenizer_bench [benchmark flags]
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "benchmark/benchmark.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"

namespace sinkserve::engine {
namespace {

std::string SharedPath(const std::string& relative) {
  const char* shared = std::getenv("SINKSERVE_SHARED");
  return std::string(shared != nullptr ? shared : "../shared") + "/" + relative;
}

struct LoadedTokenizer {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tokenizer;
};

// Null (and a message) when the vocab is missing or unreadable.
std::unique_ptr<LoadedTokenizer> Load(const std::string& vocab) {
  auto file = GgufFile::Open(SharedPath("tokenizer-vectors/" + vocab));
  if (!file.ok()) {
    std::cerr << vocab << ": " << file.status() << "\n";
    return nullptr;
  }
  auto tokenizer = Tokenizer::FromGguf(**file);
  if (!tokenizer.ok()) {
    std::cerr << vocab << ": " << tokenizer.status() << "\n";
    return nullptr;
  }
  auto loaded = std::make_unique<LoadedTokenizer>();
  loaded->file = *std::move(file);
  loaded->tokenizer = *std::move(tokenizer);
  return loaded;
}

// About 1 MB of pseudo-random words (few repeat) with some multi-byte
// characters and byte-fallback emoji.
std::string RandomWords() {
  std::string words;
  uint32_t x = 12345;
  auto next = [&x] { return x = x * 1664525u + 1013904223u; };
  while (words.size() < (1 << 20)) {
    const int len = 1 + (next() >> 28) % 10;
    for (int i = 0; i < len; ++i) {
      const uint32_t r = next() >> 24;
      if (r < 8) {
        words += "\xC3\xA9";  // é
      } else if (r < 10) {
        words += "\xF0\x9F\xA6\x99";  // 🦙
      } else {
        words.push_back(static_cast<char>('a' + r % 26));
      }
    }
    words.push_back((next() >> 24) < 16 ? '\n' : ' ');
  }
  return words;
}

// The vocab's llama.cpp test inputs repeated to 1 MB, then 64 KiB of 'a'.
std::string RepeatedInputs(const std::string& vocab) {
  std::ifstream in(SharedPath("tokenizer-vectors/" + vocab + ".inp"), std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::vector<std::string> inputs =
      absl::StrSplit(buffer.str(), "\n__ggml_vocab_test__\n");
  std::string text;
  while (!inputs.empty() && text.size() < (1 << 20)) {
    for (const std::string& input : inputs) text += input;
  }
  return text + std::string(1 << 16, 'a');
}

void Encode(benchmark::State& state, const std::string& vocab, const std::string& text) {
  const std::unique_ptr<LoadedTokenizer> loaded = Load(vocab);
  if (loaded == nullptr || text.empty()) {
    state.SkipWithError("tokenizer vectors missing (set SINKSERVE_SHARED)");
    return;
  }
  size_t tokens = 0;
  for (auto _ : state) {
    auto ids = loaded->tokenizer->Encode(text, {});
    if (!ids.ok()) {
      state.SkipWithError(std::string(ids.status().message()).c_str());
      return;
    }
    tokens = ids->size();
    benchmark::DoNotOptimize(ids->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * text.size());
  state.counters["tokens"] = static_cast<double>(tokens);
}

void BM_SpmRandomWords(benchmark::State& state) {
  Encode(state, "ggml-vocab-llama-spm.gguf", RandomWords());
}
void BM_SpmUnbrokenMegabyte(benchmark::State& state) {
  Encode(state, "ggml-vocab-llama-spm.gguf", std::string(1 << 20, 'a'));
}
void BM_BpeInputs(benchmark::State& state, const char* vocab) {
  Encode(state, vocab, RepeatedInputs(vocab));
}

BENCHMARK(BM_SpmRandomWords)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SpmUnbrokenMegabyte)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_BpeInputs, gpt2, "ggml-vocab-gpt-2.gguf")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_BpeInputs, starcoder, "ggml-vocab-starcoder.gguf")
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_BpeInputs, falcon, "ggml-vocab-falcon.gguf")
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_BpeInputs, deepseek_coder, "ggml-vocab-deepseek-coder.gguf")
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace sinkserve::engine

BENCHMARK_MAIN();
