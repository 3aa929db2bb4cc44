// GGUF parsing. Layout (little-endian), per the GGUF spec in ggml's docs:
//   "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x (string key | u32 value type | value)
//   n_tensors x (string name | u32 n_dims | i64 dims[n_dims] | u32 type |
//                u64 offset)
//   padding to `general.alignment` (default 32) | tensor data
// where a string is u64 length + bytes and an array value is u32 element
// type + u64 count + elements.
#include "engine/gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

constexpr uint32_t kMaxDims = 4;
// Arrays of arrays are legal GGUF but no model uses more than one level;
// the bound keeps recursion (parsing and destruction) shallow on hostile input.
constexpr int kMaxArrayDepth = 8;
// Smallest encodings, used to bound counts by the bytes that remain.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // empty key, u8 value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // empty name, 0 dims

// Debian's Abseil is built with its own string_view, which is what StrCat
// and Status accept; std::string_view must be converted explicitly.
absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

absl::Status Error(uint64_t offset, std::string_view what,
                   std::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(
      "gguf: ", Sv(what), " at offset ", offset, " ", Sv(problem)));
}

// Bytes one element of `type` takes at least; 0 for a type number the spec
// does not define.
uint64_t MinValueBytes(uint32_t type) {
  switch (static_cast<GgufValueType>(type)) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
    case GgufValueType::kString:  // the u64 length
      return 8;
    case GgufValueType::kArray:  // u32 element type + u64 count
      return 12;
  }
  return 0;
}

// A bounds-checked little-endian cursor. Every read names what it reads so
// that errors say where the file went wrong.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  uint64_t offset() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  absl::Status Need(uint64_t n, std::string_view what) const {
    if (n > left()) {
      return Error(pos_, what,
                   absl::StrCat("needs ", n, " bytes but only ", left(),
                                " are left (truncated file?)"));
    }
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status Read(T* out, std::string_view what) {
    SINKSERVE_RETURN_IF_ERROR(Need(sizeof(T), what));
    // GGUF is little-endian and so is every host sinkserve runs on.
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }

  absl::Status String(std::string_view* out, std::string_view what) {
    const uint64_t at = pos_;
    uint64_t len = 0;
    SINKSERVE_RETURN_IF_ERROR(Read(&len, what));
    if (len > left()) {
      return Error(at, absl::StrCat(Sv(what), ": string length ", len),
                   absl::StrCat("exceeds the ", left(), " bytes left"));
    }
    *out = std::string_view(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return absl::OkStatus();
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

template <typename T, typename Stored>
absl::Status ReadScalar(Reader& r, std::string_view what, GgufValue* out) {
  T v;
  SINKSERVE_RETURN_IF_ERROR(r.Read(&v, what));
  out->value = static_cast<Stored>(v);
  return absl::OkStatus();
}

absl::Status ReadValue(Reader& r, GgufValueType type, int depth,
                       std::string_view what, GgufValue* out) {
  out->type = type;
  switch (type) {
    case GgufValueType::kUint8:
      return ReadScalar<uint8_t, uint64_t>(r, what, out);
    case GgufValueType::kInt8:
      return ReadScalar<int8_t, int64_t>(r, what, out);
    case GgufValueType::kUint16:
      return ReadScalar<uint16_t, uint64_t>(r, what, out);
    case GgufValueType::kInt16:
      return ReadScalar<int16_t, int64_t>(r, what, out);
    case GgufValueType::kUint32:
      return ReadScalar<uint32_t, uint64_t>(r, what, out);
    case GgufValueType::kInt32:
      return ReadScalar<int32_t, int64_t>(r, what, out);
    case GgufValueType::kUint64:
      return ReadScalar<uint64_t, uint64_t>(r, what, out);
    case GgufValueType::kInt64:
      return ReadScalar<int64_t, int64_t>(r, what, out);
    case GgufValueType::kFloat32:
      return ReadScalar<float, double>(r, what, out);
    case GgufValueType::kFloat64:
      return ReadScalar<double, double>(r, what, out);
    case GgufValueType::kBool: {
      const uint64_t at = r.offset();
      uint8_t b = 0;
      SINKSERVE_RETURN_IF_ERROR(r.Read(&b, what));
      if (b > 1) {
        return Error(at, what,
                     absl::StrCat("has bool value ", b, " (not 0 or 1)"));
      }
      out->value = b == 1;
      return absl::OkStatus();
    }
    case GgufValueType::kString: {
      std::string_view s;
      SINKSERVE_RETURN_IF_ERROR(r.String(&s, what));
      out->value = s;
      return absl::OkStatus();
    }
    case GgufValueType::kArray:
      break;
  }
  const uint64_t at = r.offset();
  if (depth >= kMaxArrayDepth) {
    return Error(at, what,
                 absl::StrCat("nests arrays deeper than ", kMaxArrayDepth));
  }
  uint32_t element_type = 0;
  uint64_t count = 0;
  SINKSERVE_RETURN_IF_ERROR(r.Read(&element_type, what));
  const uint64_t min_bytes = MinValueBytes(element_type);
  if (min_bytes == 0) {
    return Error(at, what,
                 absl::StrCat("has unknown array element type ", element_type));
  }
  const uint64_t count_at = r.offset();
  SINKSERVE_RETURN_IF_ERROR(r.Read(&count, what));
  if (count > r.left() / min_bytes) {
    return Error(count_at, absl::StrCat(Sv(what), ": array count ", count),
                 absl::StrCat("needs at least ", min_bytes,
                              " bytes per element but only ", r.left(),
                              " bytes are left"));
  }
  auto array = std::make_shared<GgufArray>();
  array->element_type = static_cast<GgufValueType>(element_type);
  array->elements.resize(count);
  for (uint64_t i = 0; i < count; ++i) {
    SINKSERVE_RETURN_IF_ERROR(ReadValue(r, array->element_type, depth + 1, what,
                                        &array->elements[i]));
  }
  out->value = std::shared_ptr<const GgufArray>(std::move(array));
  return absl::OkStatus();
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "{";
  for (size_t i = 0; i < shape.size(); ++i) {
    absl::StrAppend(&s, i ? ", " : "", shape[i]);
  }
  return s + "}";
}

}  // namespace

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("cannot open ", path));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a regular file"));
  }
  auto file = std::unique_ptr<GgufFile>(new GgufFile());
  if (st.st_size > 0) {
    void* map = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ,
                       MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat("cannot mmap ", path));
    }
    file->mapping_ = map;
    file->data_ = static_cast<const uint8_t*>(map);
    file->size_ = static_cast<size_t>(st.st_size);
  }
  ::close(fd);  // the mapping keeps the file alive
  const absl::Status status = file->Parse();
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat(path, ": ", status.message()));
  }
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBuffer(
    const uint8_t* data, size_t size) {
  auto file = std::unique_ptr<GgufFile>(new GgufFile());
  file->data_ = data;
  file->size_ = data == nullptr ? 0 : size;
  SINKSERVE_RETURN_IF_ERROR(file->Parse());
  return file;
}

GgufFile::~GgufFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, size_);
}

absl::Status GgufFile::Parse() {
  Reader r(data_, size_);
  SINKSERVE_RETURN_IF_ERROR(r.Need(4, "magic"));
  if (std::memcmp(data_, "GGUF", 4) != 0) {
    return Error(0, "magic", "is not \"GGUF\" (not a GGUF file)");
  }
  uint32_t magic;
  SINKSERVE_RETURN_IF_ERROR(r.Read(&magic, "magic"));
  SINKSERVE_RETURN_IF_ERROR(r.Read(&version_, "version"));
  if (version_ == 1) {
    return Error(4, "version 1",
                 "is not supported (only 2 and 3); convert the model again "
                 "with a current llama.cpp");
  }
  if (version_ != 2 && version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(version_);
    if (swapped == 2 || swapped == 3) {
      return Error(4, absl::StrCat("version ", swapped),
                   "is big-endian, which is not supported");
    }
    return Error(4, absl::StrCat("version ", version_),
                 "is not supported (only 2 and 3)");
  }
  uint64_t n_tensors = 0;
  uint64_t n_kv = 0;
  SINKSERVE_RETURN_IF_ERROR(r.Read(&n_tensors, "tensor count"));
  SINKSERVE_RETURN_IF_ERROR(r.Read(&n_kv, "metadata count"));
  if (n_kv > r.left() / kMinKvBytes) {
    return Error(
        16, absl::StrCat("metadata count ", n_kv),
        absl::StrCat("is more than the ", r.left(), " bytes left could hold"));
  }

  metadata_.resize(n_kv);
  metadata_index_.reserve(n_kv);
  uint64_t alignment_at = 0;
  for (uint64_t i = 0; i < n_kv; ++i) {
    GgufKv& kv = metadata_[i];
    const uint64_t at = r.offset();
    SINKSERVE_RETURN_IF_ERROR(
        r.String(&kv.key, absl::StrCat("key of metadata entry ", i)));
    const std::string what = absl::StrCat("metadata '", Sv(kv.key), "'");
    const uint64_t type_at = r.offset();
    uint32_t type = 0;
    SINKSERVE_RETURN_IF_ERROR(r.Read(&type, what));
    if (MinValueBytes(type) == 0) {
      return Error(type_at, what,
                   absl::StrCat("has unknown value type ", type));
    }
    SINKSERVE_RETURN_IF_ERROR(
        ReadValue(r, static_cast<GgufValueType>(type), 0, what, &kv.value));
    if (!metadata_index_.emplace(kv.key, i).second) {
      return Error(at, what, "is a duplicate key");
    }
    if (kv.key == "general.alignment") alignment_at = at;
  }

  if (const GgufValue* v = Find("general.alignment")) {
    absl::StatusOr<uint64_t> alignment = v->AsUint();
    if (!alignment.ok() || !IsPowerOfTwo(*alignment)) {
      return Error(
          alignment_at, "metadata 'general.alignment'",
          absl::StrCat(
              "must be a nonzero power of two, got ",
              alignment.ok()
                  ? absl::StrCat(*alignment)
                  : absl::StrCat("a ", Sv(GgufValueTypeName(v->type)))));
    }
    alignment_ = *alignment;
  }

  if (n_tensors > r.left() / kMinTensorInfoBytes) {
    return Error(8, absl::StrCat("tensor count ", n_tensors),
                 absl::StrCat("is more than the ", r.left(),
                              " bytes left after the metadata could hold"));
  }
  tensors_.resize(n_tensors);
  tensor_index_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo& t = tensors_[i];
    const uint64_t at = r.offset();
    SINKSERVE_RETURN_IF_ERROR(
        r.String(&t.name, absl::StrCat("name of tensor ", i)));
    const std::string what = absl::StrCat("tensor '", Sv(t.name), "'");
    uint32_t n_dims = 0;
    const uint64_t dims_at = r.offset();
    SINKSERVE_RETURN_IF_ERROR(r.Read(&n_dims, what));
    if (n_dims > kMaxDims) {
      return Error(
          dims_at, what,
          absl::StrCat("has ", n_dims, " dimensions (at most ", kMaxDims, ")"));
    }
    t.shape.resize(n_dims);
    int64_t n = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      SINKSERVE_RETURN_IF_ERROR(r.Read(&t.shape[d], what));
      if (t.shape[d] < 0) {
        return Error(dims_at, what,
                     absl::StrCat("has negative dimension ", t.shape[d]));
      }
      if (__builtin_mul_overflow(n, t.shape[d], &n)) {
        return Error(dims_at, what,
                     absl::StrCat("has shape ", ShapeString(t.shape),
                                  " whose element count overflows"));
      }
    }
    t.num_elements = n;
    const uint64_t type_at = r.offset();
    uint32_t type = 0;
    SINKSERVE_RETURN_IF_ERROR(r.Read(&type, what));
    t.type = FindGgmlType(type);
    if (t.type == nullptr) {
      return Error(type_at, what, absl::StrCat("has unknown ggml type ", type));
    }
    const int64_t ne0 = n_dims > 0 ? t.shape[0] : 1;
    const int64_t row_bytes = GgmlRowBytes(*t.type, ne0);
    if (ne0 % t.type->block_size != 0) {
      return Error(dims_at, what,
                   absl::StrCat("has a first dimension of ", ne0,
                                ", not a multiple of the ", Sv(t.type->name),
                                " block size ", t.type->block_size));
    }
    const int64_t rows = ne0 == 0 ? 0 : n / ne0;
    int64_t bytes = 0;
    if (row_bytes < 0 || __builtin_mul_overflow(row_bytes, rows, &bytes)) {
      return Error(dims_at, what,
                   absl::StrCat("has shape ", ShapeString(t.shape),
                                " whose byte size overflows"));
    }
    t.size_bytes = static_cast<uint64_t>(bytes);
    SINKSERVE_RETURN_IF_ERROR(r.Read(&t.offset, what));
    if (t.offset % alignment_ != 0) {
      return Error(
          r.offset() - 8, what,
          absl::StrCat("has data offset ", t.offset,
                       ", not a multiple of the alignment ", alignment_));
    }
    if (!tensor_index_.emplace(t.name, i).second) {
      return Error(at, what, "is a duplicate tensor name");
    }
  }

  // Vocab-only files end right after the tensor infos, without the padding;
  // only files with tensors need the data section to exist.
  const uint64_t infos_end = r.offset();
  // Cannot overflow: infos_end <= size_ < 2^63 and alignment_ <= 2^63.
  data_offset_ = (infos_end + alignment_ - 1) / alignment_ * alignment_;
  const uint64_t available = data_offset_ <= size_ ? size_ - data_offset_ : 0;
  for (GgufTensorInfo& t : tensors_) {
    if (t.offset > available || t.size_bytes > available - t.offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gguf: tensor '", Sv(t.name), "' (", Sv(t.type->name), " ",
          ShapeString(t.shape), ", ", t.size_bytes, " bytes at data offset ",
          t.offset, ") extends past the end of the file (data section at ",
          data_offset_, ", file size ", size_, ")"));
    }
    // Only an empty tensor can pass with the data section past the end.
    t.data = data_offset_ <= size_ ? data_ + data_offset_ + t.offset : nullptr;
  }
  return absl::OkStatus();
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].value;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace sinkserve::engine
