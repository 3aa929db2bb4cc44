// ListSessions seen by a tenant. The store holds every tenant's sessions
// under scoped ids (security::ScopedId): a non-default tenant's ids are one
// contiguous range of the store's byte order ("TENANT\x1f..."), the default
// tenant's plain ids lie between those ranges, which its listing skips in one
// store call each.
#ifndef SINKSERVE_SERVICE_SERVER_TENANT_LISTING_H_
#define SINKSERVE_SERVICE_SERVER_TENANT_LISTING_H_

#include <functional>
#include <string_view>

#include "absl/status/statusor.h"
#include "sinkserve/v1/sinkserve.pb.h"

namespace sinkserve::service {

// One page of the whole store (SessionManager::List): scoped ids, page
// tokens are store ids.
using StoreListFn =
    std::function<absl::StatusOr<v1::ListSessionsResponse>(const v1::ListSessionsRequest&)>;

// A page of `tenant`'s sessions, ids as the tenant names them and page
// tokens its own ids.
absl::StatusOr<v1::ListSessionsResponse> ListTenant(const StoreListFn& list,
                                                    std::string_view tenant,
                                                    const v1::ListSessionsRequest& request);

// A page of every tenant's sessions, each with its tenant (admins).
absl::StatusOr<v1::ListSessionsResponse> ListAllTenants(const StoreListFn& list,
                                                        const v1::ListSessionsRequest& request);

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_TENANT_LISTING_H_
