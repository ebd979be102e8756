// Multi-process test swarms: deploy::LocalSwarm with the binaries of this build tree.
#pragma once

#include "deploy/local_swarm.h"

namespace strata::testing {

using deploy::LocalSwarm;
using deploy::NodeSpec;
using deploy::RunningNode;

// Options for a swarm of this build's `strata` (and `strata-linkem` when `links`), serving the
// default model, with a short membership TTL so departures show quickly.
deploy::LocalSwarmOptions SwarmOptions(bool links = false);

// Starts a coordinator; fails the test (returns null) when it cannot.
std::unique_ptr<LocalSwarm> StartSwarm(bool links = false);

}  // namespace strata::testing
