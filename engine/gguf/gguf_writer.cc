#include "engine/gguf/gguf_writer.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

constexpr int kMaxArrayDepth = 8;  // as the reader accepts

// Debian's Abseil is built with its own string_view, which is what StrCat
// and Status accept; std::string_view must be converted explicitly.
absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

template <typename T>
void Append(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(v));
}

void AppendString(std::string* out, std::string_view s) {
  Append<uint64_t>(out, s.size());
  out->append(s.data(), s.size());
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Integer `value` (as stored in a GgufValue) checked against the range of T.
template <typename T>
absl::Status AppendInt(std::string* out, const GgufValue& value) {
  T v;
  if (const auto* u = std::get_if<uint64_t>(&value.value)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "value ", *u, " does not fit a ", Sv(GgufValueTypeName(value.type))));
    }
    v = static_cast<T>(*u);
  } else if (const auto* i = std::get_if<int64_t>(&value.value)) {
    if (*i < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
        (*i > 0 && static_cast<uint64_t>(*i) >
                       static_cast<uint64_t>(std::numeric_limits<T>::max()))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "value ", *i, " does not fit a ", Sv(GgufValueTypeName(value.type))));
    }
    v = static_cast<T>(*i);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("a ", Sv(GgufValueTypeName(value.type)),
                     " value must hold an integer"));
  }
  Append<T>(out, v);
  return absl::OkStatus();
}

absl::Status PosixError(const std::string& what, const std::string& path) {
  const int err = errno;
  return absl::ErrnoToStatus(err, absl::StrCat("cannot ", what, " ", path));
}

}  // namespace

bool GgufWriter::StartKey(std::string_view key, GgufValueType type) {
  if (!status_.ok()) return false;
  if (!keys_.emplace(key).second) {
    status_ = absl::InvalidArgumentError(
        absl::StrCat("gguf writer: duplicate metadata key '", Sv(key), "'"));
    return false;
  }
  AppendString(&metadata_, key);
  Append<uint32_t>(&metadata_, static_cast<uint32_t>(type));
  ++n_kv_;
  return true;
}

void GgufWriter::AddRaw(std::string_view key, GgufValueType type, const void* v,
                        size_t n) {
  if (!status_.ok()) return;
  if (key == "general.alignment") {
    uint32_t a = 0;
    if (type == GgufValueType::kUint32) std::memcpy(&a, v, sizeof(a));
    if (!IsPowerOfTwo(a)) {
      status_ = absl::InvalidArgumentError(
          "gguf writer: general.alignment must be a uint32 power of two");
      return;
    }
    alignment_ = a;
  }
  if (!StartKey(key, type)) return;
  metadata_.append(static_cast<const char*>(v), n);
}

void GgufWriter::AddUint8(std::string_view key, uint8_t v) {
  AddRaw(key, GgufValueType::kUint8, &v, sizeof(v));
}
void GgufWriter::AddInt8(std::string_view key, int8_t v) {
  AddRaw(key, GgufValueType::kInt8, &v, sizeof(v));
}
void GgufWriter::AddUint16(std::string_view key, uint16_t v) {
  AddRaw(key, GgufValueType::kUint16, &v, sizeof(v));
}
void GgufWriter::AddInt16(std::string_view key, int16_t v) {
  AddRaw(key, GgufValueType::kInt16, &v, sizeof(v));
}
void GgufWriter::AddUint32(std::string_view key, uint32_t v) {
  AddRaw(key, GgufValueType::kUint32, &v, sizeof(v));
}
void GgufWriter::AddInt32(std::string_view key, int32_t v) {
  AddRaw(key, GgufValueType::kInt32, &v, sizeof(v));
}
void GgufWriter::AddUint64(std::string_view key, uint64_t v) {
  AddRaw(key, GgufValueType::kUint64, &v, sizeof(v));
}
void GgufWriter::AddInt64(std::string_view key, int64_t v) {
  AddRaw(key, GgufValueType::kInt64, &v, sizeof(v));
}
void GgufWriter::AddFloat32(std::string_view key, float v) {
  AddRaw(key, GgufValueType::kFloat32, &v, sizeof(v));
}
void GgufWriter::AddFloat64(std::string_view key, double v) {
  AddRaw(key, GgufValueType::kFloat64, &v, sizeof(v));
}
void GgufWriter::AddBool(std::string_view key, bool v) {
  const uint8_t b = v ? 1 : 0;
  AddRaw(key, GgufValueType::kBool, &b, sizeof(b));
}
void GgufWriter::AddString(std::string_view key, std::string_view v) {
  std::string bytes;
  AppendString(&bytes, v);
  AddRaw(key, GgufValueType::kString, bytes.data(), bytes.size());
}

void GgufWriter::AddStringArray(std::string_view key,
                                absl::Span<const std::string> v) {
  if (!StartKey(key, GgufValueType::kArray)) return;
  Append<uint32_t>(&metadata_, static_cast<uint32_t>(GgufValueType::kString));
  Append<uint64_t>(&metadata_, v.size());
  for (const std::string& s : v) AppendString(&metadata_, s);
}

void GgufWriter::AddFloat32Array(std::string_view key,
                                 absl::Span<const float> v) {
  if (!StartKey(key, GgufValueType::kArray)) return;
  Append<uint32_t>(&metadata_, static_cast<uint32_t>(GgufValueType::kFloat32));
  Append<uint64_t>(&metadata_, v.size());
  metadata_.append(reinterpret_cast<const char*>(v.data()),
                   v.size() * sizeof(float));
}

void GgufWriter::AddInt32Array(std::string_view key,
                               absl::Span<const int32_t> v) {
  if (!StartKey(key, GgufValueType::kArray)) return;
  Append<uint32_t>(&metadata_, static_cast<uint32_t>(GgufValueType::kInt32));
  Append<uint64_t>(&metadata_, v.size());
  metadata_.append(reinterpret_cast<const char*>(v.data()),
                   v.size() * sizeof(int32_t));
}

absl::Status GgufWriter::AppendValue(const GgufValue& value, GgufValueType type,
                                     int depth) {
  if (value.type != type) {
    return absl::InvalidArgumentError(
        absl::StrCat("array element is a ", Sv(GgufValueTypeName(value.type)),
                     ", the array holds ", Sv(GgufValueTypeName(type))));
  }
  std::string* out = &metadata_;
  switch (type) {
    case GgufValueType::kUint8:
      return AppendInt<uint8_t>(out, value);
    case GgufValueType::kInt8:
      return AppendInt<int8_t>(out, value);
    case GgufValueType::kUint16:
      return AppendInt<uint16_t>(out, value);
    case GgufValueType::kInt16:
      return AppendInt<int16_t>(out, value);
    case GgufValueType::kUint32:
      return AppendInt<uint32_t>(out, value);
    case GgufValueType::kInt32:
      return AppendInt<int32_t>(out, value);
    case GgufValueType::kUint64:
      return AppendInt<uint64_t>(out, value);
    case GgufValueType::kInt64:
      return AppendInt<int64_t>(out, value);
    case GgufValueType::kFloat32:
    case GgufValueType::kFloat64: {
      const auto* d = std::get_if<double>(&value.value);
      if (d == nullptr) {
        return absl::InvalidArgumentError("a float value must hold a double");
      }
      if (type == GgufValueType::kFloat32) {
        Append<float>(out, static_cast<float>(*d));
      } else {
        Append<double>(out, *d);
      }
      return absl::OkStatus();
    }
    case GgufValueType::kBool: {
      const auto* b = std::get_if<bool>(&value.value);
      if (b == nullptr)
        return absl::InvalidArgumentError("a bool must hold a bool");
      Append<uint8_t>(out, *b ? 1 : 0);
      return absl::OkStatus();
    }
    case GgufValueType::kString: {
      const auto* s = std::get_if<std::string_view>(&value.value);
      if (s == nullptr) {
        return absl::InvalidArgumentError("a string must hold a string_view");
      }
      AppendString(out, *s);
      return absl::OkStatus();
    }
    case GgufValueType::kArray: {
      const GgufArray* a = value.AsArray();
      if (a == nullptr) {
        return absl::InvalidArgumentError("an array value holds no array");
      }
      if (depth >= kMaxArrayDepth) {
        return absl::InvalidArgumentError(
            absl::StrCat("arrays nest deeper than ", kMaxArrayDepth));
      }
      Append<uint32_t>(out, static_cast<uint32_t>(a->element_type));
      Append<uint64_t>(out, a->elements.size());
      for (const GgufValue& e : a->elements) {
        SINKSERVE_RETURN_IF_ERROR(AppendValue(e, a->element_type, depth + 1));
      }
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown value type ", static_cast<uint32_t>(type)));
}

void GgufWriter::AddValue(std::string_view key, const GgufValue& value) {
  if (!status_.ok()) return;
  if (key == "general.alignment") {
    const auto* u = std::get_if<uint64_t>(&value.value);
    if (value.type != GgufValueType::kUint32 || u == nullptr) {
      status_ = absl::InvalidArgumentError(
          "gguf writer: general.alignment must be a uint32 power of two");
      return;
    }
    AddUint32(key, static_cast<uint32_t>(*u));
    return;
  }
  const size_t before = metadata_.size();
  if (!StartKey(key, value.type)) return;
  const absl::Status s = AppendValue(value, value.type, 0);
  if (!s.ok()) {
    metadata_.resize(before);  // the writer is failed; keep it tidy anyway
    status_ = absl::Status(s.code(), absl::StrCat("gguf writer: metadata '",
                                                  Sv(key), "': ", s.message()));
  }
}

absl::Status GgufWriter::CheckTensor(std::string_view name, GgmlType type,
                                     const std::vector<int64_t>& shape,
                                     uint64_t* size) {
  const std::string what = absl::StrCat("gguf writer: tensor '", Sv(name), "'");
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(type));
  if (traits == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has unknown type ", static_cast<uint32_t>(type)));
  }
  if (shape.size() > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has more than 4 dims"));
  }
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) {
      return absl::InvalidArgumentError(absl::StrCat(what, " has a bad shape"));
    }
  }
  const int64_t ne0 = shape.empty() ? 1 : shape[0];
  const int64_t row = GgmlRowBytes(*traits, ne0);
  int64_t bytes = 0;
  if (row < 0 || __builtin_mul_overflow(row, ne0 == 0 ? 0 : n / ne0, &bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": ", ne0, " elements per row is not a multiple of the ",
        Sv(traits->name), " block size ", traits->block_size));
  }
  if (!tensor_names_.emplace(name).second) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is added twice"));
  }
  *size = static_cast<uint64_t>(bytes);
  return absl::OkStatus();
}

void GgufWriter::AddTensor(std::string_view name, GgmlType type,
                           std::vector<int64_t> shape,
                           std::vector<uint8_t> data) {
  if (!status_.ok()) return;
  uint64_t size = 0;
  status_ = CheckTensor(name, type, shape, &size);
  if (!status_.ok()) return;
  if (data.size() != size) {
    status_ = absl::InvalidArgumentError(
        absl::StrCat("gguf writer: tensor '", Sv(name), "' has ", data.size(),
                     " bytes of data, its type and shape need ", size));
    return;
  }
  tensors_.push_back(Tensor{std::string(name),
                            FindGgmlType(static_cast<uint32_t>(type)),
                            std::move(shape), size, std::move(data), nullptr});
}

void GgufWriter::AddTensor(std::string_view name, GgmlType type,
                           std::vector<int64_t> shape, TensorFiller fill) {
  if (!status_.ok()) return;
  uint64_t size = 0;
  status_ = CheckTensor(name, type, shape, &size);
  if (!status_.ok()) return;
  tensors_.push_back(Tensor{std::string(name),
                            FindGgmlType(static_cast<uint32_t>(type)),
                            std::move(shape),
                            size,
                            {},
                            std::move(fill)});
}

absl::Status GgufWriter::WriteTo(std::FILE* f) const {
  uint64_t written = 0;
  auto put = [&](const void* p, size_t n) -> absl::Status {
    if (n != 0 && std::fwrite(p, 1, n, f) != n) {
      return absl::ErrnoToStatus(errno, "gguf writer: write failed");
    }
    written += n;
    return absl::OkStatus();
  };
  auto pad = [&]() -> absl::Status {
    static const char kZeros[256] = {};
    while (written % alignment_ != 0) {
      const uint64_t n =
          std::min<uint64_t>(sizeof(kZeros), alignment_ - written % alignment_);
      SINKSERVE_RETURN_IF_ERROR(put(kZeros, n));
    }
    return absl::OkStatus();
  };

  std::string header("GGUF", 4);
  Append<uint32_t>(&header, 3);
  Append<uint64_t>(&header, tensors_.size());
  Append<uint64_t>(&header, n_kv_);
  SINKSERVE_RETURN_IF_ERROR(put(header.data(), header.size()));
  SINKSERVE_RETURN_IF_ERROR(put(metadata_.data(), metadata_.size()));

  std::string infos;
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    AppendString(&infos, t.name);
    Append<uint32_t>(&infos, static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) Append<int64_t>(&infos, d);
    Append<uint32_t>(&infos, static_cast<uint32_t>(t.type->type));
    Append<uint64_t>(&infos, offset);
    offset += (t.size_bytes + alignment_ - 1) / alignment_ * alignment_;
  }
  SINKSERVE_RETURN_IF_ERROR(put(infos.data(), infos.size()));
  SINKSERVE_RETURN_IF_ERROR(pad());

  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Tensor& t = tensors_[i];
    if (!t.fill) {
      SINKSERVE_RETURN_IF_ERROR(put(t.data.data(), t.data.size()));
    } else {
      uint64_t got = 0;
      const ByteSink sink = [&](const void* p, size_t n) -> absl::Status {
        if (n > t.size_bytes - got) {
          return absl::InvalidArgumentError(absl::StrCat(
              "gguf writer: tensor '", t.name, "' filler wrote more than ",
              t.size_bytes, " bytes"));
        }
        got += n;
        return put(p, n);
      };
      SINKSERVE_RETURN_IF_ERROR(t.fill(sink));
      if (got != t.size_bytes) {
        return absl::InvalidArgumentError(
            absl::StrCat("gguf writer: tensor '", t.name, "' filler wrote ",
                         got, " of ", t.size_bytes, " bytes"));
      }
    }
    // Like llama.cpp, pad after every tensor, the last one included.
    SINKSERVE_RETURN_IF_ERROR(pad());
    if (progress_) progress_(i + 1, tensors_.size(), written);
  }
  return absl::OkStatus();
}

absl::Status GgufWriter::Write(const std::string& path) const {
  SINKSERVE_RETURN_IF_ERROR(status_);
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return PosixError("create", tmp);
  std::unique_ptr<char[]> buffer(new char[1 << 20]);
  std::setvbuf(f, buffer.get(), _IOFBF, 1 << 20);
  absl::Status status = WriteTo(f);
  if (std::fclose(f) != 0 && status.ok()) status = PosixError("close", tmp);
  if (status.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    status = PosixError("rename to", path);
  }
  if (!status.ok()) std::remove(tmp.c_str());
  return status;
}

}  // namespace sinkserve::engine
