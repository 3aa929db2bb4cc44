#include "engine/backend.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sinkserve::engine {

std::string_view KvDtypeName(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF32:
      return "f32";
    case KvDtype::kF16:
      return "f16";
    case KvDtype::kBF16:
      return "bf16";
  }
  return "unknown";
}

absl::StatusOr<KvDtype> ParseKvDtype(std::string_view name) {
  for (KvDtype dtype : {KvDtype::kF32, KvDtype::kF16, KvDtype::kBF16}) {
    if (name == KvDtypeName(dtype)) return dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown KV dtype '", absl::string_view(name.data(), name.size()),
      "' (expected f32, f16 or bf16)"));
}

size_t KvDtypeBytes(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF32:
      return 4;
    case KvDtype::kF16:
    case KvDtype::kBF16:
      return 2;
  }
  return 0;
}

}  // namespace sinkserve::engine

namespace sinkserve::engine {
namespace {

// Rows exported at capture time: nothing left to wait for.
class ReadyRows : public memory::PendingRows {
 public:
  explicit ReadyRows(std::string rows) : rows_(std::move(rows)) {}
  absl::Status Wait(std::string* out) override {
    *out = std::move(rows_);
    return absl::OkStatus();
  }

 private:
  std::string rows_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<memory::PendingRows>> KvStorage::ExportSlotsAsync(
    absl::Span<const int32_t> slots) const {
  std::string rows;
  absl::Status s = ExportSlots(slots, &rows);
  if (!s.ok()) return s;
  return std::make_unique<ReadyRows>(std::move(rows));
}

}  // namespace sinkserve::engine
