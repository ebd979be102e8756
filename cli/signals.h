// SIGINT/SIGTERM handling for long-running sub-commands.
#pragma once

namespace strata::cli {

// Blocks SIGINT and SIGTERM in this thread (and threads created afterwards), so that
// WaitForStopSignal can receive them synchronously.
void InstallStopSignals();
// Waits until SIGINT or SIGTERM arrives; returns the signal number.
int WaitForStopSignal();

}  // namespace strata::cli
