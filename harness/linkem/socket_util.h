// Small socket helpers shared by the proxy and the test-side LinkEmulator.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "harness/linkem/address.h"

namespace strata::linkem {

// An absl::Status carrying strerror(errno), prefixed by `what`.
absl::Status ErrnoError(std::string_view what);

void SetNoDelay(int fd);

// Closes with SO_LINGER 0, so the peer sees RST instead of FIN.
void CloseWithReset(int fd);

// A non-blocking listening socket bound to `address`. Port 0 is resolved to a concrete port that
// is then bound explicitly: an explicitly bound port stays reserved while `cut` has shut the
// listener down, so `restore` listens on the same port again.
absl::StatusOr<int> BindReservedListener(SocketAddress address);

inline constexpr int kListenBacklog = 512;

}  // namespace strata::linkem
