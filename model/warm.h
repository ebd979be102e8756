// Faults in the pages of a set of tensors ahead of the first forward pass, reporting progress,
// so the first token is not slowed by page faults and a user sees loading happen.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "kernels/tensor.h"

namespace strata::model {

// Reads one byte per page of every tensor. `progress(done_bytes, total_bytes)` is called
// periodically when set. Returns the total bytes touched.
uint64_t TouchPages(std::span<const kernels::Tensor> tensors,
                    const std::function<void(uint64_t, uint64_t)>& progress = nullptr);

}  // namespace strata::model
