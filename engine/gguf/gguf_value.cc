// GgufValue conversions and GgufFile's typed lookups.
#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "engine/gguf/gguf.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

// Debian's Abseil is built with its own string_view, which is what StrCat
// and Status accept; std::string_view must be converted explicitly.
absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

absl::Status WrongKind(const GgufValue& v, std::string_view wanted) {
  return absl::InvalidArgumentError(absl::StrCat("gguf: value is a ",
                                                 Sv(GgufValueTypeName(v.type)),
                                                 ", not ", Sv(wanted)));
}

// Adds the key to an error from a GgufValue accessor.
absl::Status ForKey(std::string_view key, const absl::Status& status) {
  absl::string_view msg = status.message();
  if (absl::ConsumePrefix(&msg, "gguf: ")) {
    return absl::Status(status.code(),
                        absl::StrCat("gguf: key '", Sv(key), "': ", msg));
  }
  return status;
}

const std::shared_ptr<const GgufArray>* ArrayOf(const GgufValue& v) {
  return std::get_if<std::shared_ptr<const GgufArray>>(&v.value);
}

}  // namespace

std::string_view GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
      return "uint8";
    case GgufValueType::kInt8:
      return "int8";
    case GgufValueType::kUint16:
      return "uint16";
    case GgufValueType::kInt16:
      return "int16";
    case GgufValueType::kUint32:
      return "uint32";
    case GgufValueType::kInt32:
      return "int32";
    case GgufValueType::kFloat32:
      return "float32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kUint64:
      return "uint64";
    case GgufValueType::kInt64:
      return "int64";
    case GgufValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

absl::StatusOr<uint64_t> GgufValue::AsUint() const {
  if (const auto* u = std::get_if<uint64_t>(&value)) return *u;
  if (const auto* i = std::get_if<int64_t>(&value)) {
    if (*i >= 0) return static_cast<uint64_t>(*i);
    return absl::InvalidArgumentError(absl::StrCat(
        "gguf: value ", *i, " is negative, wanted an unsigned integer"));
  }
  return WrongKind(*this, "an integer");
}

absl::StatusOr<int64_t> GgufValue::AsInt() const {
  if (const auto* i = std::get_if<int64_t>(&value)) return *i;
  if (const auto* u = std::get_if<uint64_t>(&value)) {
    if (*u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return static_cast<int64_t>(*u);
    }
    return absl::InvalidArgumentError(
        absl::StrCat("gguf: value ", *u, " does not fit an int64"));
  }
  return WrongKind(*this, "an integer");
}

absl::StatusOr<double> GgufValue::AsDouble() const {
  if (const auto* d = std::get_if<double>(&value)) return *d;
  if (const auto* i = std::get_if<int64_t>(&value))
    return static_cast<double>(*i);
  if (const auto* u = std::get_if<uint64_t>(&value))
    return static_cast<double>(*u);
  return WrongKind(*this, "a number");
}

absl::StatusOr<bool> GgufValue::AsBool() const {
  if (const auto* b = std::get_if<bool>(&value)) return *b;
  return WrongKind(*this, "a bool");
}

absl::StatusOr<std::string_view> GgufValue::AsString() const {
  if (const auto* s = std::get_if<std::string_view>(&value)) return *s;
  return WrongKind(*this, "a string");
}

const GgufArray* GgufValue::AsArray() const {
  if (type != GgufValueType::kArray) return nullptr;
  const auto* a = ArrayOf(*this);
  return a == nullptr ? nullptr : a->get();
}

namespace {

absl::StatusOr<const GgufValue*> Lookup(const GgufFile& file,
                                        std::string_view key) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("gguf: key '", Sv(key), "' not found"));
  }
  return v;
}

absl::StatusOr<const GgufArray*> LookupArray(const GgufFile& file,
                                             std::string_view key) {
  SINKSERVE_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(file, key));
  const GgufArray* a = v->AsArray();
  if (a == nullptr) return ForKey(key, WrongKind(*v, "an array"));
  return a;
}

// Applies `get` to every element of the array at `key`, naming the key and
// the index of the first element that does not convert.
template <typename T, typename Get>
absl::StatusOr<std::vector<T>> ConvertArray(const GgufFile& file,
                                            std::string_view key, Get get) {
  SINKSERVE_ASSIGN_OR_RETURN(const GgufArray* a, LookupArray(file, key));
  std::vector<T> out;
  out.reserve(a->elements.size());
  for (size_t i = 0; i < a->elements.size(); ++i) {
    auto v = get(a->elements[i]);
    if (!v.ok()) {
      return ForKey(absl::StrCat(Sv(key), "[", i, "]"), v.status());
    }
    out.push_back(static_cast<T>(*v));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string_view> GgufFile::GetString(
    std::string_view key) const {
  SINKSERVE_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  auto s = v->AsString();
  if (!s.ok()) return ForKey(key, s.status());
  return s;
}

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  SINKSERVE_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  auto u = v->AsUint();
  if (!u.ok()) return ForKey(key, u.status());
  return u;
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  SINKSERVE_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  auto i = v->AsInt();
  if (!i.ok()) return ForKey(key, i.status());
  return i;
}

absl::StatusOr<double> GgufFile::GetDouble(std::string_view key) const {
  SINKSERVE_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  auto d = v->AsDouble();
  if (!d.ok()) return ForKey(key, d.status());
  return d;
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  SINKSERVE_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  auto b = v->AsBool();
  if (!b.ok()) return ForKey(key, b.status());
  return b;
}

absl::StatusOr<std::vector<std::string_view>> GgufFile::GetStringArray(
    std::string_view key) const {
  return ConvertArray<std::string_view>(
      *this, key, [](const GgufValue& v) { return v.AsString(); });
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(
    std::string_view key) const {
  return ConvertArray<float>(*this, key,
                             [](const GgufValue& v) { return v.AsDouble(); });
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(
    std::string_view key) const {
  return ConvertArray<int64_t>(*this, key,
                               [](const GgufValue& v) { return v.AsInt(); });
}

}  // namespace sinkserve::engine
