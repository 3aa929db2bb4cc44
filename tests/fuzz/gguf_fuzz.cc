// libFuzzer target: GgufFile::FromBuffer on arbitrary bytes, then every value,
// tensor and ModelConfig::FromGguf on whatever parses. Run with scripts/fuzz.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include "engine/gguf/gguf.h"
#include "engine/gguf/model_config.h"

namespace {

using sinkserve::engine::GgufArray;
using sinkserve::engine::GgufFile;
using sinkserve::engine::GgufValue;

// Reads every accessor so that a value the parser let through is fully
// exercised (and ASan sees any string view reaching outside the input).
uint64_t Touch(const GgufValue& v) {
  uint64_t h = static_cast<uint64_t>(v.type);
  if (auto u = v.AsUint(); u.ok()) h += *u;
  if (auto i = v.AsInt(); i.ok()) h += static_cast<uint64_t>(*i);
  if (auto d = v.AsDouble(); d.ok()) h += *d == *d ? 1 : 2;
  if (auto b = v.AsBool(); b.ok()) h += *b;
  if (auto s = v.AsString(); s.ok()) {
    for (char c : *s) h = h * 31 + static_cast<unsigned char>(c);
  }
  if (const GgufArray* a = v.AsArray()) {
    for (const GgufValue& e : a->elements) h += Touch(e);
  }
  return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = GgufFile::FromBuffer(data, size);
  if (!file.ok()) return 0;
  const GgufFile& f = **file;
  volatile uint64_t sink = 0;
  for (const auto& kv : f.metadata()) {
    sink = sink + Touch(kv.value) + kv.key.size();
    if (f.Find(kv.key) != &kv.value) __builtin_trap();
    // The typed getters convert or refuse, never crash.
    (void)f.GetString(kv.key);
    (void)f.GetUint(kv.key);
    (void)f.GetStringArray(kv.key);
    (void)f.GetFloatArray(kv.key);
    (void)f.GetIntArray(kv.key);
  }
  for (const auto& t : f.tensors()) {
    if (f.FindTensor(t.name) != &t) __builtin_trap();
    if (t.size_bytes == 0) continue;
    // Every byte a tensor claims must lie inside the input.
    if (t.data < data || t.data + t.size_bytes > data + size) __builtin_trap();
    sink = sink + t.data[0] + t.data[t.size_bytes - 1];
  }
  auto config = sinkserve::engine::ModelConfig::FromGguf(f);
  if (config.ok()) sink = sink + static_cast<uint64_t>(config->vocab_size);
  return 0;
}
