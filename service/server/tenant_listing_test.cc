#include "service/server/tenant_listing.h"

#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "service/security/caller.h"

namespace sinkserve::service {
namespace {

// A store listing over scoped ids, in byte order, as SessionManager::List
// pages it (with a few ids unreadable).
class FakeStore {
 public:
  void Add(const std::string& scoped, bool unreadable = false) { ids_[scoped] = unreadable; }
  int calls() const { return calls_; }
  StoreListFn Fn() {
    return [this](const v1::ListSessionsRequest& r) -> absl::StatusOr<v1::ListSessionsResponse> {
      ++calls_;
      v1::ListSessionsResponse page;
      const uint32_t max = r.page_size() == 0 ? 100 : r.page_size();
      auto it = ids_.upper_bound(r.page_token());
      uint32_t n = 0;
      for (; it != ids_.end() && n < max; ++it, ++n) {
        if (it->second) {
          page.add_unreadable()->set_session_id(it->first);
        } else {
          page.add_sessions()->set_session_id(it->first);
        }
      }
      if (it != ids_.end()) page.set_next_page_token(std::prev(it)->first);
      return page;
    };
  }

 private:
  std::map<std::string, bool> ids_;
  int calls_ = 0;
};

std::vector<std::string> ListAll(const StoreListFn& list, const std::string& tenant,
                                 uint32_t page_size, std::vector<std::string>* unreadable) {
  std::vector<std::string> ids;
  v1::ListSessionsRequest request;
  request.set_page_size(page_size);
  for (int pages = 0; pages < 10000; ++pages) {
    absl::StatusOr<v1::ListSessionsResponse> page = ListTenant(list, tenant, request);
    EXPECT_TRUE(page.ok());
    EXPECT_LE(static_cast<uint32_t>(page->sessions_size()), page_size);
    for (const v1::SessionInfo& s : page->sessions()) {
      EXPECT_EQ(s.tenant(), tenant);
      ids.push_back(s.session_id());
    }
    for (const v1::UnreadableSession& b : page->unreadable()) {
      EXPECT_EQ(b.tenant(), tenant);
      unreadable->push_back(b.session_id());
    }
    if (page->next_page_token().empty()) return ids;
    request.set_page_token(page->next_page_token());
  }
  ADD_FAILURE() << "listing did not end";
  return ids;
}

TEST(TenantListingTest, EachTenantSeesExactlyItsOwnInOrder) {
  std::mt19937 rng(7);
  const std::vector<std::string> tenants = {
      security::kDefaultTenant, "a", "alpha", "alpha-2", "b", "zz"};
  // Plain ids chosen to fall between and beside the tenants' ranges.
  const std::vector<std::string> stems = {"a", "alpha", "alpha-", "b", "c", "zz", "~", "!", "0"};
  for (int trial = 0; trial < 40; ++trial) {
    FakeStore store;
    std::map<std::string, std::set<std::string>> want, want_bad;
    for (int i = 0; i < 200; ++i) {
      const std::string& tenant = tenants[rng() % tenants.size()];
      const std::string id = absl::StrCat(stems[rng() % stems.size()], rng() % 50);
      const bool bad = rng() % 10 == 0;
      store.Add(security::ScopedId(tenant, id), bad);
      (bad ? want_bad : want)[tenant].insert(id);
      (bad ? want : want_bad)[tenant].erase(id);
    }
    for (const std::string& tenant : tenants) {
      for (uint32_t page_size : {1u, 3u, 100u}) {
        std::vector<std::string> unreadable;
        std::vector<std::string> got = ListAll(store.Fn(), tenant, page_size, &unreadable);
        EXPECT_EQ(got, std::vector<std::string>(want[tenant].begin(), want[tenant].end()))
            << "tenant " << tenant << " page " << page_size;
        EXPECT_EQ(std::set<std::string>(unreadable.begin(), unreadable.end()), want_bad[tenant]);
      }
    }
  }
}

TEST(TenantListingTest, TenantRangeCostsOneCallWhenItFits) {
  FakeStore store;
  for (int i = 0; i < 1000; ++i) store.Add(absl::StrCat("plain", i));
  for (int i = 0; i < 5; ++i) store.Add(security::ScopedId("acme", absl::StrCat("s", i)));
  v1::ListSessionsRequest request;
  absl::StatusOr<v1::ListSessionsResponse> page = ListTenant(store.Fn(), "acme", request);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->sessions_size(), 5);
  EXPECT_EQ(store.calls(), 1);
}

TEST(TenantListingTest, AllTenantsShowsOwners) {
  FakeStore store;
  store.Add("x");
  store.Add(security::ScopedId("acme", "x"));
  absl::StatusOr<v1::ListSessionsResponse> page =
      ListAllTenants(store.Fn(), v1::ListSessionsRequest());
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->sessions_size(), 2);
  EXPECT_EQ(page->sessions(0).session_id(), "x");
  EXPECT_EQ(page->sessions(1).session_id(), "x");
  std::set<std::string> owners = {page->sessions(0).tenant(), page->sessions(1).tenant()};
  EXPECT_EQ(owners, (std::set<std::string>{"acme", "default"}));
}

}  // namespace
}  // namespace sinkserve::service
