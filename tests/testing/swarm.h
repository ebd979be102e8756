// Multi-process test swarms: harness::LocalSwarm with the binaries of this build tree.
#pragma once

#include "harness/local_swarm.h"

namespace strata::testkit {

using harness::LocalSwarm;
using harness::NodeSpec;
using harness::RunningNode;

// Options for a swarm of this build's `strata` (and `strata-linkem` when `links`), serving the
// default model, with a short membership TTL so departures show quickly.
harness::LocalSwarmOptions SwarmOptions(bool links = false);

// Starts a coordinator; fails the test (returns null) when it cannot.
std::unique_ptr<LocalSwarm> StartSwarm(bool links = false);

}  // namespace strata::testkit
