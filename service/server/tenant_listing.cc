#include "service/server/tenant_listing.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "memory/session_state.h"
#include "service/security/caller.h"

namespace sinkserve::service {
namespace {

using security::SplitScopedId;
using security::TenantAndId;

constexpr uint32_t kDefaultPage = 100;
constexpr uint32_t kMaxPage = 10000;

// Store ids after every id of `tenant`'s range: each id byte is <= 0x7e.
std::string PastTenant(const std::string& tenant) {
  return tenant + memory::kTenantSeparator + '\x7f';
}

void Unscope(v1::SessionInfo* info) {
  TenantAndId split = SplitScopedId(info->session_id());
  info->set_session_id(std::move(split.id));
  info->set_tenant(std::move(split.tenant));
}

void Unscope(v1::UnreadableSession* bad) {
  TenantAndId split = SplitScopedId(bad->session_id());
  bad->set_session_id(std::move(split.id));
  bad->set_tenant(std::move(split.tenant));
}

}  // namespace

absl::StatusOr<v1::ListSessionsResponse> ListTenant(const StoreListFn& list,
                                                    std::string_view tenant_view,
                                                    const v1::ListSessionsRequest& request) {
  const std::string tenant(tenant_view);
  const bool is_default = tenant == security::kDefaultTenant;
  const uint32_t want =
      request.page_size() == 0 ? kDefaultPage : std::min(request.page_size(), kMaxPage);
  std::string start = !request.page_token().empty()
                          ? security::ScopedId(tenant, request.page_token())
                      : is_default ? std::string()
                                   : tenant + memory::kTenantSeparator;
  v1::ListSessionsResponse out;
  while (true) {
    v1::ListSessionsRequest store_request;
    store_request.set_page_size(want - static_cast<uint32_t>(out.sessions_size()));
    store_request.set_page_token(start);
    absl::StatusOr<v1::ListSessionsResponse> page = list(store_request);
    if (!page.ok()) return page.status();
    // Both lists are in id order; walk them merged.
    struct Entry {
      const std::string* id;
      v1::SessionInfo* info;
      v1::UnreadableSession* bad;
    };
    std::vector<Entry> entries;
    for (v1::SessionInfo& s : *page->mutable_sessions())
      entries.push_back({&s.session_id(), &s, nullptr});
    for (v1::UnreadableSession& b : *page->mutable_unreadable()) {
      entries.push_back({&b.session_id(), nullptr, &b});
    }
    std::sort(entries.begin(), entries.end(),
              [](const Entry& a, const Entry& b) { return *a.id < *b.id; });
    std::string resume;  // where the next store call starts, if not the page's end
    for (const Entry& e : entries) {
      const TenantAndId split = SplitScopedId(*e.id);
      if (split.tenant != tenant) {
        if (!is_default) return out;  // past the tenant's range: the end
        resume = PastTenant(split.tenant);
        break;
      }
      if (e.info != nullptr) {
        *out.add_sessions() = std::move(*e.info);
        Unscope(out.mutable_sessions(out.sessions_size() - 1));
      } else {
        *out.add_unreadable() = std::move(*e.bad);
        Unscope(out.mutable_unreadable(out.unreadable_size() - 1));
      }
      if (static_cast<uint32_t>(out.sessions_size()) == want) {
        out.set_next_page_token(split.id);
        return out;
      }
    }
    if (!resume.empty()) {
      start = std::move(resume);
    } else if (!page->next_page_token().empty()) {
      start = page->next_page_token();
    } else {
      return out;
    }
  }
}

absl::StatusOr<v1::ListSessionsResponse> ListAllTenants(const StoreListFn& list,
                                                        const v1::ListSessionsRequest& request) {
  absl::StatusOr<v1::ListSessionsResponse> page = list(request);
  if (!page.ok()) return page.status();
  for (v1::SessionInfo& s : *page->mutable_sessions()) Unscope(&s);
  for (v1::UnreadableSession& b : *page->mutable_unreadable()) Unscope(&b);
  return page;
}

}  // namespace sinkserve::service
