// GGUF (version 3, or 2 on request) writer: the inverse of GgufFile.
//
// Metadata keys keep their insertion order; setting a key again replaces its value in place.
// Tensors are laid out in the order they were added, each starting at a multiple of the
// alignment (default 32) from the data section, each padded with zeros to the alignment.
//
// WriteFile streams: the header is encoded in memory (small), then every tensor is written through
// a fixed-size buffer, so writing a multi-GB model needs memory only for the tensors added with
// AddTensor (copied) — AddTensorGenerated produces its rows at write time. Typical use, a random
// 7B-shaped model:
//
//   GgufWriter w;
//   w.SetString("general.architecture", "llama");
//   w.SetUint32("llama.block_count", 32);
//   RETURN_IF_ERROR(w.AddTensorGenerated("blk.0.attn_q.weight", DType::kQ4_1, {4096, 4096},
//       [&](int64_t row, uint8_t* dst) { /* write RowBytes(kQ4_1, 4096) bytes */ }));
//   RETURN_IF_ERROR(w.WriteFile("/tmp/model.gguf"));
//
// Not thread-safe; WriteFile and Serialize may be called repeatedly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "gguf/reader.h"
#include "kernels/dtype.h"

namespace strata::gguf {

namespace internal {
class GgufSink;  // where WriteTo sends bytes: a vector or a buffered file
}  // namespace internal

class GgufWriter {
 public:
  // Fills one row (`RowBytes(dtype, shape.back())` bytes, zeroed beforehand) of a generated tensor.
  // `row` is in [0, product of all dimensions but the innermost).
  using RowFill = std::function<void(int64_t row, uint8_t* dst)>;

  static constexpr uint32_t kDefaultAlignment = 32;

  GgufWriter() = default;
  GgufWriter(const GgufWriter&) = delete;  // may hold GBs of copied tensors
  GgufWriter& operator=(const GgufWriter&) = delete;
  GgufWriter(GgufWriter&&) = default;
  GgufWriter& operator=(GgufWriter&&) = default;

  // GGUF version written in the header: 3 (default) or 2 (same layout). INVALID_ARGUMENT otherwise.
  absl::Status set_version(uint32_t version);
  uint32_t version() const { return version_; }

  // Alignment of the data section and of every tensor: a power of two. A value other than 32 is
  // recorded as the metadata key `general.alignment` (uint32). INVALID_ARGUMENT otherwise.
  absl::Status set_alignment(uint32_t alignment);
  uint32_t alignment() const { return alignment_; }

  // Scalar metadata. Setting `general.alignment` to a power-of-two uint32 here is the same as
  // set_alignment; any other value for that key is written as given (the reader will reject it).
  void SetUint8(std::string_view key, uint8_t value);
  void SetInt8(std::string_view key, int8_t value);
  void SetUint16(std::string_view key, uint16_t value);
  void SetInt16(std::string_view key, int16_t value);
  void SetUint32(std::string_view key, uint32_t value);
  void SetInt32(std::string_view key, int32_t value);
  void SetUint64(std::string_view key, uint64_t value);
  void SetInt64(std::string_view key, int64_t value);
  void SetFloat32(std::string_view key, float value);
  void SetFloat64(std::string_view key, double value);
  void SetBool(std::string_view key, bool value);
  void SetString(std::string_view key, std::string_view value);

  // Array metadata; the element type follows the C++ element type.
  void SetArray(std::string_view key, std::span<const uint8_t> values);
  void SetArray(std::string_view key, std::span<const int8_t> values);
  void SetArray(std::string_view key, std::span<const uint16_t> values);
  void SetArray(std::string_view key, std::span<const int16_t> values);
  void SetArray(std::string_view key, std::span<const uint32_t> values);
  void SetArray(std::string_view key, std::span<const int32_t> values);
  void SetArray(std::string_view key, std::span<const uint64_t> values);
  void SetArray(std::string_view key, std::span<const int64_t> values);
  void SetArray(std::string_view key, std::span<const float> values);
  void SetArray(std::string_view key, std::span<const double> values);
  void SetArray(std::string_view key, const std::vector<bool>& values);
  void SetArray(std::string_view key, std::span<const std::string> values);
  void SetArray(std::string_view key, std::span<const std::string_view> values);

  // Copies a value read by GgufFile (e.g. to carry a model's metadata over). UNIMPLEMENTED for
  // arrays of arrays, which the reader keeps opaque.
  absl::Status SetValue(std::string_view key, const GgufValue& value);

  bool HasKey(std::string_view key) const { return index_.contains(std::string(key)); }
  // Removes a key; false when absent.
  bool RemoveKey(std::string_view key);
  size_t metadata_count() const { return kvs_.size(); }

  // Adds a tensor whose `bytes` bytes at `data` are copied now. `shape` is outermost first (1 to 4
  // positive dimensions); the innermost must be a multiple of the dtype's block size and `bytes`
  // must equal RowBytes(dtype, innermost) * rows. INVALID_ARGUMENT otherwise, ALREADY_EXISTS for a
  // repeated name.
  absl::Status AddTensor(std::string name,
                         kernels::DType dtype,
                         std::vector<int64_t> shape,
                         const void* data,
                         size_t bytes);
  // Adds a tensor whose rows `fill_row` produces, in order, each time the file is written (or
  // serialized): only the callback is stored. It should be deterministic if the file is written
  // more than once. Rows are generated in place in the write buffer.
  absl::Status AddTensorGenerated(std::string name,
                                  kernels::DType dtype,
                                  std::vector<int64_t> shape,
                                  RowFill fill_row);
  size_t tensor_count() const { return tensors_.size(); }

  // Size in bytes of the file WriteFile would write (no tensor data is generated).
  uint64_t FileSize() const;

  // Writes the file at `path` (replaced if present; removed again on failure) through a 4 MiB
  // buffer. On an I/O error, the status absl::ErrnoToStatus gives (NOT_FOUND for a missing
  // directory, PERMISSION_DENIED, ...), naming the path.
  absl::Status WriteFile(const std::string& path) const;
  // The whole file in memory (tests, small models).
  std::vector<uint8_t> Serialize() const;

 private:
  struct Kv {
    std::string key;
    std::string encoded;  // u32 value type followed by the value, as in the file
  };
  struct TensorEntry {
    std::string name;
    kernels::DType dtype;
    std::vector<int64_t> shape;  // outermost first
    int64_t rows = 0;
    size_t row_bytes = 0;
    std::vector<uint8_t> data;  // when added with AddTensor
    RowFill fill_row;           // when added with AddTensorGenerated
  };

  void Put(std::string_view key, std::string encoded);
  absl::Status CheckTensor(const std::string& name,
                           kernels::DType dtype,
                           const std::vector<int64_t>& shape) const;
  TensorEntry MakeEntry(std::string name, kernels::DType dtype, std::vector<int64_t> shape) const;
  // Offset of each tensor from the data section start.
  std::vector<uint64_t> TensorOffsets() const;
  // Header: magic through tensor infos, padded to the alignment.
  std::string EncodeHeader() const;
  absl::Status WriteTo(internal::GgufSink& sink) const;

  uint32_t version_ = 3;
  uint32_t alignment_ = kDefaultAlignment;
  std::vector<Kv> kvs_;
  absl::flat_hash_map<std::string, size_t> index_;  // key -> position in kvs_
  std::vector<TensorEntry> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;  // name -> position in tensors_
};

}  // namespace strata::gguf
