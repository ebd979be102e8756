#include "kernels/dtype.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace strata::kernels {
namespace {

constexpr DTypeInfo kF32Info{"f32", 1, 4, false};
constexpr DTypeInfo kF16Info{"f16", 1, 2, false};
constexpr DTypeInfo kBF16Info{"bf16", 1, 2, false};
constexpr DTypeInfo kQ4_0Info{"q4_0", 32, 18, true};
constexpr DTypeInfo kQ4_1Info{"q4_1", 32, 20, true};
constexpr DTypeInfo kQ8_0Info{"q8_0", 32, 34, true};
constexpr DTypeInfo kQ8_1Info{"q8_1", 32, 36, true};
constexpr DTypeInfo kQ4_KInfo{"q4_K", 256, 144, true};
constexpr DTypeInfo kQ6_KInfo{"q6_K", 256, 210, true};
constexpr DTypeInfo kQ8_KInfo{"q8_K", 256, 292, true};

}  // namespace

const DTypeInfo& Info(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return kF32Info;
    case DType::kF16:
      return kF16Info;
    case DType::kBF16:
      return kBF16Info;
    case DType::kQ4_0:
      return kQ4_0Info;
    case DType::kQ4_1:
      return kQ4_1Info;
    case DType::kQ8_0:
      return kQ8_0Info;
    case DType::kQ8_1:
      return kQ8_1Info;
    case DType::kQ4_K:
      return kQ4_KInfo;
    case DType::kQ6_K:
      return kQ6_KInfo;
    case DType::kQ8_K:
      return kQ8_KInfo;
  }
  return kF32Info;
}

absl::StatusOr<DType> DTypeFromGgml(uint32_t ggml_type) {
  switch (ggml_type) {
    case 0:
      return DType::kF32;
    case 1:
      return DType::kF16;
    case 2:
      return DType::kQ4_0;
    case 3:
      return DType::kQ4_1;
    case 8:
      return DType::kQ8_0;
    case 9:
      return DType::kQ8_1;
    case 12:
      return DType::kQ4_K;
    case 14:
      return DType::kQ6_K;
    case 15:
      return DType::kQ8_K;
    case 30:
      return DType::kBF16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported tensor type ",
                       ggml_type,
                       " (supported: f32, f16, bf16, q4_0, q4_1, q8_0, q4_K, q6_K)"));
  }
}

absl::StatusOr<DType> WeightDTypeFromName(std::string_view name) {
  for (DType t : {DType::kF32,
                  DType::kF16,
                  DType::kBF16,
                  DType::kQ4_0,
                  DType::kQ4_1,
                  DType::kQ8_0,
                  DType::kQ4_K,
                  DType::kQ6_K}) {
    if (Info(t).name == name) return t;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown weight type '",
                   std::string(name),
                   "' (f32, f16, bf16, q4_0, q4_1, q8_0, q4_K, q6_K)"));
}

}  // namespace strata::kernels
