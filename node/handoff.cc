#include "node/handoff.h"

#include <unistd.h>

#include <fstream>

#include "common/strings.h"

namespace strata::node {

std::string HostIdentity() {
  std::string boot;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::getline(f, boot);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return StrCat(boot, "/", host);
}

}  // namespace strata::node
