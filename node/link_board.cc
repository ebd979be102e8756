#include "node/link_board.h"

#include <utility>

#include "common/strings.h"

namespace strata::node {

uint64_t LinkBoard::Add(v1::DownstreamLinkInfo info) {
  absl::MutexLock lock(&mu_);
  const uint64_t key = next_++;
  links_[key] = std::move(info);
  return key;
}

void LinkBoard::Update(uint64_t key, const std::string& transport, const std::string& reason) {
  absl::MutexLock lock(&mu_);
  auto it = links_.find(key);
  if (it == links_.end()) return;
  it->second.set_transport(transport);
  it->second.set_reason(reason);
}

void LinkBoard::SetSession(uint64_t key, const std::string& session_id) {
  absl::MutexLock lock(&mu_);
  auto it = links_.find(key);
  if (it != links_.end()) it->second.set_session_id(session_id);
}

void LinkBoard::CountPayload(uint64_t key) {
  absl::MutexLock lock(&mu_);
  auto it = links_.find(key);
  if (it != links_.end()) it->second.set_link_payloads(it->second.link_payloads() + 1);
}

void LinkBoard::Remove(uint64_t key) {
  absl::MutexLock lock(&mu_);
  links_.erase(key);
}

std::vector<v1::DownstreamLinkInfo> LinkBoard::Snapshot() const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::DownstreamLinkInfo> out;
  for (const auto& [key, info] : links_) out.push_back(info);
  return out;
}

std::map<std::string, int> LinkBoard::Counts() const {
  std::map<std::string, int> out;
  for (const v1::DownstreamLinkInfo& info : Snapshot()) ++out[info.transport()];
  return out;
}

std::string LinkBoard::Summary() const {
  std::string out;
  for (const auto& [transport, n] : Counts()) {
    out += StrCat(out.empty() ? "links " : ", ", transport, " ", n);
  }
  return out;
}

}  // namespace strata::node
