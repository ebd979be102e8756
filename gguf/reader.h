// GGUF (versions 2 and 3) reader over a read-only memory map.
//
// Layout (little-endian): magic "GGUF", u32 version, u64 tensor_count, u64 kv_count, kv_count
// key/value pairs, tensor_count tensor infos, padding to `general.alignment` (default 32), then
// the tensor data. Every length, count and offset read from the file is checked against the file
// size before it is used, so a malformed file yields a clear absl::Status (INVALID_ARGUMENT or
// DATA_LOSS for truncation), never a crash or an allocation proportional to a corrupt count.
//
// Nothing is copied: strings and tensor data are views into the mapping, valid while the GgufFile
// lives. Pages are touched only when a tensor's data is read, so a process that uses a few layers
// keeps only those resident.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace strata::gguf {

enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view GgufTypeName(GgufType type);
// Bytes of one value of a fixed-size type; 0 for strings and arrays, -1 for an unknown type.
int GgufTypeSize(GgufType type);

// One metadata value. Scalars are decoded; arrays of fixed-size elements point at their raw bytes
// in the mapping; arrays of strings are decoded into views; nested arrays are kept opaque.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  // Scalars: integers widen into u64/i64, floats into f64.
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string_view str;
  // Arrays.
  GgufType elem_type = GgufType::kUint8;
  uint64_t count = 0;
  const uint8_t* raw = nullptr;           // fixed-size element arrays
  std::vector<std::string_view> strings;  // string arrays

  bool is_integer() const;
  bool is_float() const { return type == GgufType::kFloat32 || type == GgufType::kFloat64; }
};

struct GgufTensorInfo {
  std::string name;
  kernels::DType dtype = kernels::DType::kF32;
  int ndim = 0;
  std::array<int64_t, 4> shape{};  // outermost first (GGUF stores innermost first)
  uint64_t offset = 0;             // relative to the start of the data section
  size_t bytes = 0;
  const uint8_t* data = nullptr;  // into the mapping
};

class GgufFile {
 public:
  // Maps and parses a file. NOT_FOUND if it does not exist; INVALID_ARGUMENT / DATA_LOSS for a
  // malformed one. The message names the file and what is wrong.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);

  // Parses an image already in memory (tests, fuzzing). `data` must outlive the result.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(const uint8_t* data,
                                                         size_t size,
                                                         std::string name = "<memory>");

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& name() const { return name_; }
  uint32_t version() const { return version_; }
  size_t size() const { return size_; }
  const uint8_t* base() const { return base_; }
  uint64_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_offset_; }

  // Metadata keys in file order.
  const std::vector<std::string_view>& keys() const { return keys_; }
  const GgufValue* Find(std::string_view key) const;

  // Typed accessors. NOT_FOUND when absent, INVALID_ARGUMENT when the type does not fit.
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;  // any non-negative integer
  absl::StatusOr<double> GetFloat(std::string_view key) const;   // float32/float64 or integer
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string_view> GetString(std::string_view key) const;
  absl::StatusOr<const std::vector<std::string_view>*> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  // With a default when the key is absent (still an error when present with a wrong type).
  absl::StatusOr<uint64_t> GetUintOr(std::string_view key, uint64_t fallback) const;
  absl::StatusOr<double> GetFloatOr(std::string_view key, double fallback) const;
  absl::StatusOr<bool> GetBoolOr(std::string_view key, bool fallback) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // NOT_FOUND naming the tensor when absent.
  absl::StatusOr<const GgufTensorInfo*> FindTensor(std::string_view name) const;
  bool HasTensor(std::string_view name) const { return tensor_index_.contains(name); }
  // A view of a tensor's data.
  static kernels::Tensor View(const GgufTensorInfo& info);

  // Hints the kernel to read a tensor's pages ahead of use (madvise WILLNEED); no-op in memory.
  void Prefetch(const GgufTensorInfo& info) const;

 private:
  GgufFile() = default;
  absl::Status ParseAll();

  std::string name_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  void* mapping_ = nullptr;  // non-null when we own an mmap
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  size_t data_offset_ = 0;
  std::vector<std::string_view> keys_;
  absl::flat_hash_map<std::string_view, GgufValue> values_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string_view, size_t> tensor_index_;
};

}  // namespace strata::gguf
