#include "tests/testing/swarm.h"

#include <gtest/gtest.h>

#include "tests/testing/paths.h"

namespace strata::testkit {

harness::LocalSwarmOptions SwarmOptions(bool links) {
  harness::LocalSwarmOptions o;
  o.strata_binary = BinaryDir() + "/strata";
  o.linkem_binary = BinaryDir() + "/strata-linkem";
  o.model_path = DefaultModelPath();
  o.links = links;
  o.ttl_ms = 3000;
  o.heartbeat_ms = 300;
  return o;
}

std::unique_ptr<LocalSwarm> StartSwarm(bool links) {
  auto swarm = LocalSwarm::Start(SwarmOptions(links));
  EXPECT_TRUE(swarm.ok()) << swarm.status();
  return swarm.ok() ? std::move(*swarm) : nullptr;
}

}  // namespace strata::testkit
