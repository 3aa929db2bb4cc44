// Export and Import, written once over the SessionStore interface: the file
// holds full states only, so any store can read what any other wrote.
#include "memory/session_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "memory/snapshot_format.h"
#include "memory/status_macros.h"

namespace sinkserve::memory {
namespace {

namespace snap = ::sinkserve::memory::snapshot;

absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

// K/V rows are split into frames of this size in export files.
constexpr uint64_t kExportChunkBytes = 4 << 20;

absl::Status ErrnoError(int err, std::string_view what,
                        const std::string& path) {
  return absl::ErrnoToStatus(err, absl::StrCat(Sv(what), " ", path));
}

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<FILE, FileCloser>;

class ExportWriter {
 public:
  ExportWriter(File file, std::string path)
      : file_(std::move(file)), path_(std::move(path)) {}

  absl::Status Write(std::string_view bytes) {
    if (bytes.empty()) return absl::OkStatus();
    if (std::fwrite(bytes.data(), 1, bytes.size(), file_.get()) !=
        bytes.size()) {
      return ErrnoError(errno, "writing export file", path_);
    }
    bytes_ += bytes.size();
    return absl::OkStatus();
  }

  absl::Status WriteSession(const LoadedSession& s) {
    const uint32_t chunks =
        snap::KvChunkCount(s.state.kv.size(), kExportChunkBytes);
    SINKSERVE_RETURN_IF_ERROR(
        Write(snap::EncodeFullState(s.state, s.version, chunks)));
    const std::string_view kv = s.state.kv;
    for (uint32_t i = 0; i < chunks; ++i) {
      const std::string_view data =
          kv.substr(i * kExportChunkBytes, kExportChunkBytes);
      SINKSERVE_RETURN_IF_ERROR(
          Write(snap::KvChunkPrefix(s.version, i + 1, data)));
      SINKSERVE_RETURN_IF_ERROR(Write(data));
    }
    return absl::OkStatus();
  }

  // Flushes and fsyncs; the file is complete on disk after it.
  absl::Status Close() {
    FILE* f = file_.release();
    if (std::fflush(f) != 0 || ::fsync(fileno(f)) != 0) {
      const int err = errno;
      std::fclose(f);
      return ErrnoError(err, "flushing export file", path_);
    }
    if (std::fclose(f) != 0) return ErrnoError(errno, "closing", path_);
    return absl::OkStatus();
  }

  uint64_t bytes() const { return bytes_; }

 private:
  File file_;
  std::string path_;
  uint64_t bytes_ = 0;
};

// Reads an export file front to back, verifying every frame.
class ExportReader {
 public:
  static absl::StatusOr<ExportReader> Open(const std::string& path) {
    File f(std::fopen(path.c_str(), "rb"));
    if (f == nullptr) return ErrnoError(errno, "opening export file", path);
    struct stat st;
    if (::fstat(fileno(f.get()), &st) != 0) {
      return ErrnoError(errno, "stat of export file", path);
    }
    ExportReader r(std::move(f), path, static_cast<uint64_t>(st.st_size));
    std::string preamble;
    SINKSERVE_RETURN_IF_ERROR(
        r.ReadExactly(snap::kExportPreambleBytes, "preamble", &preamble));
    SINKSERVE_RETURN_IF_ERROR(r.Context(snap::CheckExportPreamble(preamble)));
    return r;
  }

  // The next session, or nullopt after the end marker (which must close the
  // file). with_kv false verifies the K/V frames without keeping them.
  absl::StatusOr<std::optional<LoadedSession>> Next(bool with_kv) {
    std::string value;
    SINKSERVE_ASSIGN_OR_RETURN(snap::RecordType type, ReadFrame(&value));
    if (type == snap::RecordType::kExportEnd) {
      SINKSERVE_ASSIGN_OR_RETURN(uint64_t count,
                                 Context(snap::DecodeExportEnd(value)));
      if (count != sessions_ || offset_ != size_) {
        return Context(absl::DataLossError(absl::StrCat(
            "end marker counts ", count, " sessions, file holds ", sessions_,
            ", with ", size_ - offset_, " bytes after the marker")));
      }
      return std::optional<LoadedSession>();
    }
    const uint64_t at = frame_offset_;
    SINKSERVE_ASSIGN_OR_RETURN(snap::FullStateRecord rec,
                               Context(snap::DecodeFullState(value)));
    LoadedSession s;
    s.state = std::move(rec.state);
    s.version = rec.info.seq;
    if (snap::KvChunkCount(rec.info.kv_bytes, kExportChunkBytes) !=
        rec.info.kv_chunks) {
      return Context(absl::DataLossError(absl::StrCat(
          "session ", rec.info.id, " at offset ", at, ": ", rec.info.kv_chunks,
          " kv chunks cannot hold ", rec.info.kv_bytes, " bytes")));
    }
    if (with_kv) s.state.kv.reserve(rec.info.kv_bytes);
    uint64_t got = 0;
    for (uint32_t i = 1; i <= rec.info.kv_chunks; ++i) {
      SINKSERVE_ASSIGN_OR_RETURN(type, ReadFrame(&value));
      absl::StatusOr<std::string_view> data =
          snap::DecodeKvChunk(value, rec.info.seq, i);
      if (!data.ok()) {
        return Context(snap::Annotate(
            data.status(),
            absl::StrCat("session ", rec.info.id, " kv chunk ", i)));
      }
      got += data->size();
      if (with_kv) s.state.kv.append(data->data(), data->size());
    }
    if (got != rec.info.kv_bytes) {
      return Context(absl::DataLossError(
          absl::StrCat("session ", rec.info.id, ": kv chunks hold ", got,
                       " bytes, its record says ", rec.info.kv_bytes)));
    }
    ++sessions_;
    return std::optional<LoadedSession>(std::move(s));
  }

  uint64_t size() const { return size_; }

 private:
  ExportReader(File f, std::string path, uint64_t size)
      : file_(std::move(f)), path_(std::move(path)), size_(size) {}

  template <typename T>
  T Context(T status_or) const {
    if (status_or.ok()) return status_or;
    return snap::Annotate(
        status_or.status(),
        absl::StrCat("export file ", path_, " at offset ", frame_offset_));
  }
  absl::Status Context(const absl::Status& status) const {
    return snap::Annotate(status, absl::StrCat("export file ", path_,
                                               " at offset ", frame_offset_));
  }

  absl::Status ReadExactly(uint64_t n, std::string_view what,
                           std::string* out) {
    if (n > size_ - offset_) {
      return Context(absl::DataLossError(
          absl::StrCat("truncated: ", Sv(what), " needs ", n, " bytes, ",
                       size_ - offset_, " left in the file")));
    }
    out->resize(n);
    if (n > 0 && std::fread(out->data(), 1, n, file_.get()) != n) {
      if (std::ferror(file_.get())) {
        return ErrnoError(errno, "reading export file", path_);
      }
      return Context(absl::DataLossError("file shrank while being read"));
    }
    offset_ += n;
    return absl::OkStatus();
  }

  // One whole frame into `value` (header included), checksum verified.
  absl::StatusOr<snap::RecordType> ReadFrame(std::string* value) {
    frame_offset_ = offset_;
    if (offset_ == size_) {
      return Context(
          absl::DataLossError("file ends without its end marker (truncated)"));
    }
    std::string header;
    SINKSERVE_RETURN_IF_ERROR(
        ReadExactly(snap::kFrameHeaderBytes, "frame header", &header));
    SINKSERVE_ASSIGN_OR_RETURN(snap::FrameHeaderFields f,
                               Context(snap::ParseFrameHeader(header)));
    std::string payload;
    SINKSERVE_RETURN_IF_ERROR(ReadExactly(
        f.payload_bytes,
        absl::StrCat(Sv(snap::RecordTypeName(f.type)), " frame"), &payload));
    SINKSERVE_RETURN_IF_ERROR(Context(snap::VerifyFrame(header, f, payload)));
    *value = std::move(header);
    *value += payload;
    return f.type;
  }

  File file_;
  std::string path_;
  uint64_t size_ = 0;
  uint64_t offset_ = 0;
  uint64_t frame_offset_ = 0;
  uint64_t sessions_ = 0;
};

}  // namespace

absl::StatusOr<TransferResult> SessionStore::Export(
    const std::string& path, absl::Span<const std::string> ids) const {
  std::vector<std::string> all;
  if (ids.empty()) {
    ListOptions options;
    options.max_sessions = 10000;
    do {
      SINKSERVE_ASSIGN_OR_RETURN(ListPage page, List(options));
      // A session whose metadata is unreadable cannot be exported; failing
      // beats writing a backup that silently lacks it.
      if (!page.bad.empty()) {
        return snap::Annotate(
            page.bad.front().status,
            absl::StrCat("export of session ", page.bad.front().id));
      }
      for (const SessionInfo& info : page.sessions) all.push_back(info.id);
      options.start_after = page.next_start_after;
    } while (!options.start_after.empty());
    ids = all;
  }

  // Written aside and renamed, so `path` never holds a partial file.
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  File f(std::fopen(tmp.c_str(), "wb"));
  if (f == nullptr) return ErrnoError(errno, "creating export file", tmp);
  ExportWriter writer(std::move(f), tmp);
  absl::Status status = writer.Write(snap::EncodeExportPreamble());
  for (size_t i = 0; status.ok() && i < ids.size(); ++i) {
    absl::StatusOr<LoadedSession> s = Load(ids[i], kAnyModel);
    status = s.ok() ? writer.WriteSession(*s) : s.status();
  }
  if (status.ok()) status = writer.Write(snap::EncodeExportEnd(ids.size()));
  const uint64_t bytes = writer.bytes();
  const absl::Status closed = writer.Close();
  if (status.ok()) status = closed;
  if (status.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    status = ErrnoError(errno, absl::StrCat("renaming ", tmp, " to"), path);
  }
  if (!status.ok()) {
    std::remove(tmp.c_str());
    return status;
  }
  // Make the rename itself durable.
  const std::string::size_type slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return TransferResult{static_cast<int64_t>(ids.size()), bytes};
}

absl::StatusOr<TransferResult> SessionStore::Import(
    const std::string& path, const ImportOptions& options) {
  // Pass 1: the whole file must verify before anything is written.
  std::set<std::string> ids;
  uint64_t size = 0;
  {
    SINKSERVE_ASSIGN_OR_RETURN(ExportReader reader, ExportReader::Open(path));
    size = reader.size();
    while (true) {
      SINKSERVE_ASSIGN_OR_RETURN(std::optional<LoadedSession> s,
                                 reader.Next(/*with_kv=*/false));
      if (!s) break;
      const std::string& id = s->state.id;
      if (absl::Status st = ValidateSessionId(id); !st.ok()) {
        return absl::DataLossError(absl::StrCat(
            "export file ", path, ": invalid session id: ", st.message()));
      }
      if (!ids.insert(id).second) {
        return absl::DataLossError(absl::StrCat(
            "export file ", path, " holds session ", id, " twice"));
      }
      if (!options.overwrite) {
        SINKSERVE_ASSIGN_OR_RETURN(bool exists, Exists(id));
        if (exists) {
          return absl::AlreadyExistsError(
              absl::StrCat("import of ", path, ": session ", id,
                           " already exists (set overwrite to replace it)"));
        }
      }
    }
  }
  // Pass 2: read again (checking again: the file could have changed) and Put.
  SINKSERVE_ASSIGN_OR_RETURN(ExportReader reader, ExportReader::Open(path));
  int64_t n = 0;
  while (true) {
    SINKSERVE_ASSIGN_OR_RETURN(std::optional<LoadedSession> s,
                               reader.Next(/*with_kv=*/true));
    if (!s) break;
    if (absl::Status st = s->state.Validate(); !st.ok()) {
      return absl::DataLossError(
          absl::StrCat("export file ", path, ": session ", s->state.id,
                       " is not a valid state: ", st.message()));
    }
    SINKSERVE_RETURN_IF_ERROR(Put(s->state).status());
    ++n;
  }
  return TransferResult{n, size};
}

}  // namespace sinkserve::memory
