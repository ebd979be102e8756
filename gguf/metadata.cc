// Typed access to a GGUF file's metadata: each getter names the file and the key in its error.
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/strings.h"
#include "gguf/reader.h"

namespace strata::gguf {

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = values_.find(key);
  return it == values_.end() ? nullptr : &it->second;
}

namespace {

bool IsSigned(GgufType type) {
  return type == GgufType::kInt8 || type == GgufType::kInt16 || type == GgufType::kInt32 ||
         type == GgufType::kInt64;
}

absl::Status Missing(const std::string& file, std::string_view key) {
  return absl::NotFoundError(StrCat(file, ": metadata key '", key, "' is missing"));
}

absl::Status WrongType(const std::string& file,
                       std::string_view key,
                       const GgufValue& v,
                       std::string_view want) {
  return absl::InvalidArgumentError(
      StrCat(file, ": metadata key '", key, "' is ", GgufTypeName(v.type), ", expected ", want));
}

}  // namespace

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  // Unsigned values at or above 2^63 have a negative `i`; only signed types can be negative.
  if (!v->is_integer() || (IsSigned(v->type) && v->i < 0)) {
    return WrongType(name_, key, *v, "a non-negative integer");
  }
  return v->u;
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  if (v->is_float()) return v->f;
  if (v->is_integer()) {
    return IsSigned(v->type) ? static_cast<double>(v->i) : static_cast<double>(v->u);
  }
  return WrongType(name_, key, *v, "a number");
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  if (v->type != GgufType::kBool) return WrongType(name_, key, *v, "bool");
  return v->b;
}

absl::StatusOr<std::string_view> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  if (v->type != GgufType::kString) return WrongType(name_, key, *v, "string");
  return v->str;
}

absl::StatusOr<const std::vector<std::string_view>*> GgufFile::GetStringArray(
    std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  if (v->type != GgufType::kArray || v->elem_type != GgufType::kString) {
    return WrongType(name_, key, *v, "array of string");
  }
  return &v->strings;
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  if (v->type != GgufType::kArray ||
      (v->elem_type != GgufType::kFloat32 && v->elem_type != GgufType::kFloat64)) {
    return WrongType(name_, key, *v, "array of float");
  }
  std::vector<float> out(v->count);
  for (uint64_t i = 0; i < v->count; ++i) {
    if (v->elem_type == GgufType::kFloat32) {
      std::memcpy(&out[i], v->raw + 4 * i, 4);
    } else {
      double d;
      std::memcpy(&d, v->raw + 8 * i, 8);
      out[i] = static_cast<float>(d);
    }
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(name_, key);
  int size = v->type == GgufType::kArray ? GgufTypeSize(v->elem_type) : -1;
  GgufValue probe;
  probe.type = v->elem_type;
  if (size <= 0 || !probe.is_integer()) return WrongType(name_, key, *v, "array of integer");
  std::vector<int64_t> out(v->count);
  const bool is_signed = v->elem_type == GgufType::kInt8 || v->elem_type == GgufType::kInt16 ||
                         v->elem_type == GgufType::kInt32 || v->elem_type == GgufType::kInt64;
  for (uint64_t i = 0; i < v->count; ++i) {
    const uint8_t* p = v->raw + size * i;
    switch (size) {
      case 1:
        out[i] = is_signed ? int64_t{static_cast<int8_t>(*p)} : int64_t{*p};
        break;
      case 2: {
        uint16_t x;
        std::memcpy(&x, p, 2);
        out[i] = is_signed ? int64_t{static_cast<int16_t>(x)} : int64_t{x};
        break;
      }
      case 4: {
        uint32_t x;
        std::memcpy(&x, p, 4);
        out[i] = is_signed ? int64_t{static_cast<int32_t>(x)} : int64_t{x};
        break;
      }
      default: {
        int64_t x;
        std::memcpy(&x, p, 8);
        out[i] = x;
        break;
      }
    }
  }
  return out;
}

absl::StatusOr<uint64_t> GgufFile::GetUintOr(std::string_view key, uint64_t fallback) const {
  return Find(key) == nullptr ? absl::StatusOr<uint64_t>(fallback) : GetUint(key);
}

absl::StatusOr<double> GgufFile::GetFloatOr(std::string_view key, double fallback) const {
  return Find(key) == nullptr ? absl::StatusOr<double>(fallback) : GetFloat(key);
}

absl::StatusOr<bool> GgufFile::GetBoolOr(std::string_view key, bool fallback) const {
  return Find(key) == nullptr ? absl::StatusOr<bool>(fallback) : GetBool(key);
}

}  // namespace strata::gguf
