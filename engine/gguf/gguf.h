// A validating, memory-mapped reader for GGUF files, versions 2 and 3.
//
// Everything is checked before use: magic, version, counts, string and array
// lengths, value types, tensor types, shapes, offsets and sizes against the file
// size, alignment, and integer overflow. A bad file yields an absl::Status that
// names the problem and the byte offset where it was found; it never crashes and
// never allocates more than the file could justify (every element consumes at
// least one byte of the file, so counts are bounded by the bytes that remain).
#ifndef SINKSERVE_ENGINE_GGUF_GGUF_H_
#define SINKSERVE_ENGINE_GGUF_GGUF_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/gguf/ggml_types.h"

namespace sinkserve::engine {

// Metadata value types, numbered as the GGUF spec stores them.
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view GgufValueTypeName(GgufValueType type);

struct GgufArray;

// One metadata value. Strings are views into the mapping (valid while the
// GgufFile lives). Arrays may nest.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  std::variant<uint64_t, int64_t, double, bool, std::string_view,
               std::shared_ptr<const GgufArray>>
      value;

  // Conversions for callers that do not care about the stored width. Integers
  // convert between signed and unsigned when the value is in range; AsDouble
  // accepts any number. Wrong kinds give INVALID_ARGUMENT.
  absl::StatusOr<uint64_t> AsUint() const;
  absl::StatusOr<int64_t> AsInt() const;
  absl::StatusOr<double> AsDouble() const;
  absl::StatusOr<bool> AsBool() const;
  absl::StatusOr<std::string_view> AsString() const;
  const GgufArray* AsArray() const;  // nullptr unless type == kArray
};

struct GgufArray {
  GgufValueType element_type = GgufValueType::kUint8;
  std::vector<GgufValue> elements;
};

struct GgufKv {
  std::string_view key;
  GgufValue value;
};

struct GgufTensorInfo {
  std::string_view name;
  const GgmlTypeTraits* type = nullptr;  // never null after a successful parse
  // ggml order: shape[0] is the innermost (contiguous) dimension, i.e. a
  // weight matrix W (out, in) is stored with shape {in, out}.
  std::vector<int64_t> shape;
  int64_t num_elements = 0;
  uint64_t offset = 0;      // relative to the start of the data section
  uint64_t size_bytes = 0;  // whole tensor, from type and shape
  const uint8_t* data = nullptr;  // into the mapping; aligned as the file says
};

class GgufFile {
 public:
  // Maps `path` read-only and parses it. The data stay in the page cache; no
  // copy of the tensors is made.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);

  // Parses a buffer the caller keeps alive for the life of the result (tests,
  // fuzzing). Same validation as Open.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBuffer(const uint8_t* data,
                                                              size_t size);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  size_t file_size() const { return size_; }
  const uint8_t* file_data() const { return data_; }

  const std::vector<GgufKv>& metadata() const { return metadata_; }
  const GgufValue* Find(std::string_view key) const;  // nullptr if absent

  // Typed lookups: NOT_FOUND if the key is absent, INVALID_ARGUMENT if the
  // value has the wrong kind.
  absl::StatusOr<std::string_view> GetString(std::string_view key) const;
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetDouble(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::vector<std::string_view>> GetStringArray(
      std::string_view key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;

 private:
  GgufFile() = default;
  absl::Status Parse();

  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  void* mapping_ = nullptr;  // non-null when this object owns an mmap
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<GgufKv> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string_view, size_t> metadata_index_;
  absl::flat_hash_map<std::string_view, size_t> tensor_index_;
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_GGUF_GGUF_H_
