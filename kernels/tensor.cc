#include "kernels/tensor.h"

#include "absl/strings/str_cat.h"

namespace strata::kernels {

std::string Tensor::ShapeString() const {
  std::string out = "{";
  for (int i = 0; i < ndim; ++i) absl::StrAppend(&out, i == 0 ? "" : ", ", shape[i]);
  out += "} ";
  out += Info(dtype).name;
  return out;
}

}  // namespace strata::kernels
