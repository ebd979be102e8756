#include "gguf/writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include "common/status.h"
#include "common/strings.h"

namespace strata::gguf {

static_assert(std::endian::native == std::endian::little, "GGUF is written little-endian");

namespace {

constexpr char kAlignmentKey[] = "general.alignment";
// Limits shared with the reader (gguf.cc), so whatever is written can be read back.
constexpr uint64_t kMaxDim = uint64_t{1} << 40;
constexpr uint64_t kMaxElements = uint64_t{1} << 46;
// GGML keeps tensor names in a 64-byte buffer including the NUL: longer names break llama.cpp.
constexpr size_t kMaxTensorName = 63;
constexpr size_t kFileBufferBytes = size_t{4} << 20;

uint64_t AlignUp(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

template <typename T>
void Append(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

void AppendString(std::string& out, std::string_view s) {
  Append<uint64_t>(out, s.size());
  out.append(s);
}

template <typename T>
std::string EncodeScalar(GgufType type, T value) {
  std::string out;
  Append<uint32_t>(out, static_cast<uint32_t>(type));
  Append<T>(out, value);
  return out;
}

std::string ArrayHeader(GgufType elem_type, uint64_t count) {
  std::string out;
  Append<uint32_t>(out, static_cast<uint32_t>(GgufType::kArray));
  Append<uint32_t>(out, static_cast<uint32_t>(elem_type));
  Append<uint64_t>(out, count);
  return out;
}

template <typename T>
std::string EncodeArray(GgufType elem_type, std::span<const T> values) {
  std::string out = ArrayHeader(elem_type, values.size());
  out.append(reinterpret_cast<const char*>(values.data()), values.size_bytes());
  return out;
}

template <typename Strings>
std::string EncodeStringArray(const Strings& values) {
  std::string out = ArrayHeader(GgufType::kString, values.size());
  for (const auto& s : values) AppendString(out, s);
  return out;
}

int FixedSize(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    default:
      return 0;
  }
}

}  // namespace

namespace internal {

// Destination of the encoded file: a growing vector (Serialize) or a buffered fd (WriteFile).
class GgufSink {
 public:
  virtual ~GgufSink() = default;
  virtual absl::Status Write(const void* data, size_t n) = 0;
  // Space for the next `n` bytes, which the caller must fill before the next call.
  virtual absl::StatusOr<uint8_t*> Claim(size_t n) = 0;

  absl::Status Zeros(size_t n) {
    ASSIGN_OR_RETURN(uint8_t * dst, Claim(n));
    std::memset(dst, 0, n);
    return absl::OkStatus();
  }
};

}  // namespace internal

namespace {

class VectorSink : public internal::GgufSink {
 public:
  explicit VectorSink(std::vector<uint8_t>& out) : out_(out) {}
  absl::Status Write(const void* data, size_t n) override {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    out_.insert(out_.end(), p, p + n);
    return absl::OkStatus();
  }
  absl::StatusOr<uint8_t*> Claim(size_t n) override {
    size_t old = out_.size();
    out_.resize(old + n);
    return out_.data() + old;
  }

 private:
  std::vector<uint8_t>& out_;
};

class FileSink : public internal::GgufSink {
 public:
  FileSink(int fd, const std::string& path) : fd_(fd), path_(path), buffer_(kFileBufferBytes) {}

  absl::Status Write(const void* data, size_t n) override {
    if (n > buffer_.size()) {  // large copied tensors bypass the buffer
      RETURN_IF_ERROR(Flush());
      return WriteAll(static_cast<const uint8_t*>(data), n);
    }
    ASSIGN_OR_RETURN(uint8_t * dst, Claim(n));
    std::memcpy(dst, data, n);
    return absl::OkStatus();
  }
  absl::StatusOr<uint8_t*> Claim(size_t n) override {
    if (used_ + n > buffer_.size()) {
      RETURN_IF_ERROR(Flush());
      if (n > buffer_.size()) buffer_.resize(n);
    }
    uint8_t* dst = buffer_.data() + used_;
    used_ += n;
    return dst;
  }
  absl::Status Flush() {
    absl::Status status = WriteAll(buffer_.data(), used_);
    used_ = 0;
    return status;
  }

 private:
  absl::Status WriteAll(const uint8_t* p, size_t n) {
    while (n > 0) {
      ssize_t written = ::write(fd_, p, std::min<size_t>(n, size_t{1} << 30));
      if (written < 0) {
        if (errno == EINTR) continue;
        return absl::ErrnoToStatus(errno, StrCat(path_, ": write failed"));
      }
      p += written;
      n -= static_cast<size_t>(written);
    }
    return absl::OkStatus();
  }

  int fd_;
  const std::string& path_;
  std::vector<uint8_t> buffer_;
  size_t used_ = 0;
};

}  // namespace

absl::Status GgufWriter::set_version(uint32_t version) {
  if (version != 2 && version != 3) {
    return absl::InvalidArgumentError(
        StrCat("GGUF version ", version, " cannot be written (supported: 2, 3)"));
  }
  version_ = version;
  return absl::OkStatus();
}

absl::Status GgufWriter::set_alignment(uint32_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    return absl::InvalidArgumentError(
        StrCat("GGUF alignment ", alignment, " is not a power of two"));
  }
  alignment_ = alignment;
  if (alignment != kDefaultAlignment || HasKey(kAlignmentKey)) SetUint32(kAlignmentKey, alignment);
  return absl::OkStatus();
}

void GgufWriter::Put(std::string_view key, std::string encoded) {
  if (key == kAlignmentKey) {
    uint32_t type, value;
    std::memcpy(&type, encoded.data(), 4);
    if (type == static_cast<uint32_t>(GgufType::kUint32)) {
      std::memcpy(&value, encoded.data() + 4, 4);
      if (value != 0 && (value & (value - 1)) == 0) alignment_ = value;
    }
  }
  auto [it, inserted] = index_.try_emplace(std::string(key), kvs_.size());
  if (inserted) {
    kvs_.push_back(Kv{std::string(key), std::move(encoded)});
  } else {
    kvs_[it->second].encoded = std::move(encoded);
  }
}

bool GgufWriter::RemoveKey(std::string_view key) {
  auto it = index_.find(std::string(key));
  if (it == index_.end()) return false;
  kvs_.erase(kvs_.begin() + static_cast<ptrdiff_t>(it->second));
  index_.clear();
  for (size_t i = 0; i < kvs_.size(); ++i) index_.emplace(kvs_[i].key, i);
  if (key == kAlignmentKey) alignment_ = kDefaultAlignment;
  return true;
}

void GgufWriter::SetUint8(std::string_view k, uint8_t v) {
  Put(k, EncodeScalar(GgufType::kUint8, v));
}
void GgufWriter::SetInt8(std::string_view k, int8_t v) { Put(k, EncodeScalar(GgufType::kInt8, v)); }
void GgufWriter::SetUint16(std::string_view k, uint16_t v) {
  Put(k, EncodeScalar(GgufType::kUint16, v));
}
void GgufWriter::SetInt16(std::string_view k, int16_t v) {
  Put(k, EncodeScalar(GgufType::kInt16, v));
}
void GgufWriter::SetUint32(std::string_view k, uint32_t v) {
  Put(k, EncodeScalar(GgufType::kUint32, v));
}
void GgufWriter::SetInt32(std::string_view k, int32_t v) {
  Put(k, EncodeScalar(GgufType::kInt32, v));
}
void GgufWriter::SetUint64(std::string_view k, uint64_t v) {
  Put(k, EncodeScalar(GgufType::kUint64, v));
}
void GgufWriter::SetInt64(std::string_view k, int64_t v) {
  Put(k, EncodeScalar(GgufType::kInt64, v));
}
void GgufWriter::SetFloat32(std::string_view k, float v) {
  Put(k, EncodeScalar(GgufType::kFloat32, v));
}
void GgufWriter::SetFloat64(std::string_view k, double v) {
  Put(k, EncodeScalar(GgufType::kFloat64, v));
}
void GgufWriter::SetBool(std::string_view k, bool v) {
  Put(k, EncodeScalar<uint8_t>(GgufType::kBool, v ? 1 : 0));
}
void GgufWriter::SetString(std::string_view k, std::string_view v) {
  std::string out;
  Append<uint32_t>(out, static_cast<uint32_t>(GgufType::kString));
  AppendString(out, v);
  Put(k, std::move(out));
}

void GgufWriter::SetArray(std::string_view k, std::span<const uint8_t> v) {
  Put(k, EncodeArray(GgufType::kUint8, v));
}
void GgufWriter::SetArray(std::string_view k, std::span<const int8_t> v) {
  Put(k, EncodeArray(GgufType::kInt8, v));
}
void GgufWriter::SetArray(std::string_view k, std::span<const uint16_t> v) {
  Put(k, EncodeArray(GgufType::kUint16, v));
}
void GgufWriter::SetArray(std::string_view k, std::span<const int16_t> v) {
  Put(k, EncodeArray(GgufType::kInt16, v));
}
void GgufWriter::SetArray(std::string_view k, std::span<const uint32_t> v) {
  Put(k, EncodeArray(GgufType::kUint32, v));
}
void GgufWriter::SetArray(std::string_view k, std::span<const int32_t> v) {
  Put(k, EncodeArray(GgufType::kInt32, v));
}
void GgufWriter::SetArray(std::string_view k, std::span<const uint64_t> v) {
  Put(k, EncodeArray(GgufType::kUint64, v));
}
void GgufWriter::SetArray(std::string_view k, std::span<const int64_t> v) {
  Put(k, EncodeArray(GgufType::kInt64, v));
}
void GgufWriter::SetArray(std::string_view k, std::span<const float> v) {
  Put(k, EncodeArray(GgufType::kFloat32, v));
}
void GgufWriter::SetArray(std::string_view k, std::span<const double> v) {
  Put(k, EncodeArray(GgufType::kFloat64, v));
}
void GgufWriter::SetArray(std::string_view k, const std::vector<bool>& v) {
  std::string out = ArrayHeader(GgufType::kBool, v.size());
  for (bool b : v) out.push_back(b ? 1 : 0);
  Put(k, std::move(out));
}
void GgufWriter::SetArray(std::string_view k, std::span<const std::string> v) {
  Put(k, EncodeStringArray(v));
}
void GgufWriter::SetArray(std::string_view k, std::span<const std::string_view> v) {
  Put(k, EncodeStringArray(v));
}

absl::Status GgufWriter::SetValue(std::string_view key, const GgufValue& v) {
  std::string out;
  Append<uint32_t>(out, static_cast<uint32_t>(v.type));
  if (v.is_integer()) {
    // `u` holds the two's-complement bits of every integer type: keep the low bytes.
    out.append(reinterpret_cast<const char*>(&v.u), FixedSize(v.type));
  } else if (v.type == GgufType::kFloat32) {
    Append<float>(out, static_cast<float>(v.f));
  } else if (v.type == GgufType::kFloat64) {
    Append<double>(out, v.f);
  } else if (v.type == GgufType::kBool) {
    out.push_back(v.b ? 1 : 0);
  } else if (v.type == GgufType::kString) {
    AppendString(out, v.str);
  } else if (v.type == GgufType::kArray && v.elem_type == GgufType::kString) {
    out = EncodeStringArray(v.strings);
  } else if (v.type == GgufType::kArray && FixedSize(v.elem_type) > 0) {
    out = ArrayHeader(v.elem_type, v.count);
    out.append(reinterpret_cast<const char*>(v.raw), v.count * FixedSize(v.elem_type));
  } else if (v.type == GgufType::kArray) {
    return absl::UnimplementedError(StrCat(
        "metadata key '", key, "': arrays of ", GgufTypeName(v.elem_type), " cannot be copied"));
  } else {
    return absl::InvalidArgumentError(
        StrCat("metadata key '", key, "': unknown value type ", static_cast<uint32_t>(v.type)));
  }
  Put(key, std::move(out));
  return absl::OkStatus();
}

absl::Status GgufWriter::CheckTensor(const std::string& name,
                                     kernels::DType dtype,
                                     const std::vector<int64_t>& shape) const {
  auto bad = [&](auto... what) {
    return absl::InvalidArgumentError(StrCat("tensor '", name, "': ", what...));
  };
  if (name.empty() || name.size() > kMaxTensorName) {
    return bad("name must be 1 to ", kMaxTensorName, " bytes, got ", name.size());
  }
  if (tensor_index_.contains(name)) {
    return absl::AlreadyExistsError(StrCat("tensor '", name, "' was already added"));
  }
  if (!kernels::DTypeFromGgml(static_cast<uint32_t>(dtype)).ok()) {
    return bad("unsupported dtype ", static_cast<uint32_t>(dtype));
  }
  if (shape.empty() || shape.size() > 4) return bad(shape.size(), " dimensions (1..4)");
  uint64_t numel = 1;
  for (int64_t dim : shape) {
    if (dim <= 0 || static_cast<uint64_t>(dim) > kMaxDim ||
        numel > kMaxElements / static_cast<uint64_t>(dim)) {
      return bad("dimension ", dim, " is out of range");
    }
    numel *= static_cast<uint64_t>(dim);
  }
  const kernels::DTypeInfo& info = kernels::Info(dtype);
  if (shape.back() % info.block_size != 0) {
    return bad("row of ",
               shape.back(),
               " elements is not a multiple of the ",
               info.name,
               " block size ",
               info.block_size);
  }
  return absl::OkStatus();
}

GgufWriter::TensorEntry GgufWriter::MakeEntry(std::string name,
                                              kernels::DType dtype,
                                              std::vector<int64_t> shape) const {
  TensorEntry e;
  e.name = std::move(name);
  e.dtype = dtype;
  e.rows = 1;
  for (size_t d = 0; d + 1 < shape.size(); ++d) e.rows *= shape[d];
  e.row_bytes = kernels::RowBytes(dtype, shape.back());
  e.shape = std::move(shape);
  return e;
}

absl::Status GgufWriter::AddTensor(std::string name,
                                   kernels::DType dtype,
                                   std::vector<int64_t> shape,
                                   const void* data,
                                   size_t bytes) {
  RETURN_IF_ERROR(CheckTensor(name, dtype, shape));
  TensorEntry e = MakeEntry(std::move(name), dtype, std::move(shape));
  const size_t want = e.row_bytes * static_cast<size_t>(e.rows);
  if (bytes != want) {
    return absl::InvalidArgumentError(StrCat(
        "tensor '", e.name, "': got ", bytes, " bytes of data, its shape and dtype need ", want));
  }
  if (data == nullptr) {
    return absl::InvalidArgumentError(StrCat("tensor '", e.name, "': data is null"));
  }
  const uint8_t* p = static_cast<const uint8_t*>(data);
  e.data.assign(p, p + bytes);
  tensor_index_.emplace(e.name, tensors_.size());
  tensors_.push_back(std::move(e));
  return absl::OkStatus();
}

absl::Status GgufWriter::AddTensorGenerated(std::string name,
                                            kernels::DType dtype,
                                            std::vector<int64_t> shape,
                                            RowFill fill_row) {
  RETURN_IF_ERROR(CheckTensor(name, dtype, shape));
  if (!fill_row) {
    return absl::InvalidArgumentError(StrCat("tensor '", name, "': no row generator"));
  }
  TensorEntry e = MakeEntry(std::move(name), dtype, std::move(shape));
  e.fill_row = std::move(fill_row);
  tensor_index_.emplace(e.name, tensors_.size());
  tensors_.push_back(std::move(e));
  return absl::OkStatus();
}

std::vector<uint64_t> GgufWriter::TensorOffsets() const {
  std::vector<uint64_t> offsets;
  offsets.reserve(tensors_.size());
  uint64_t next = 0;
  for (const TensorEntry& e : tensors_) {
    offsets.push_back(next);
    next = AlignUp(next + e.row_bytes * static_cast<uint64_t>(e.rows), alignment_);
  }
  return offsets;
}

std::string GgufWriter::EncodeHeader() const {
  std::string out;
  out.append("GGUF", 4);
  Append<uint32_t>(out, version_);
  Append<uint64_t>(out, tensors_.size());
  Append<uint64_t>(out, kvs_.size());
  for (const Kv& kv : kvs_) {
    AppendString(out, kv.key);
    out.append(kv.encoded);
  }
  const std::vector<uint64_t> offsets = TensorOffsets();
  for (size_t t = 0; t < tensors_.size(); ++t) {
    const TensorEntry& e = tensors_[t];
    AppendString(out, e.name);
    Append<uint32_t>(out, static_cast<uint32_t>(e.shape.size()));
    for (auto it = e.shape.rbegin(); it != e.shape.rend(); ++it) {  // innermost first
      Append<uint64_t>(out, static_cast<uint64_t>(*it));
    }
    Append<uint32_t>(out, static_cast<uint32_t>(e.dtype));
    Append<uint64_t>(out, offsets[t]);
  }
  out.resize(AlignUp(out.size(), alignment_), '\0');
  return out;
}

uint64_t GgufWriter::FileSize() const {
  uint64_t size = EncodeHeader().size();
  if (!tensors_.empty()) {
    const TensorEntry& last = tensors_.back();
    size += AlignUp(TensorOffsets().back() + last.row_bytes * static_cast<uint64_t>(last.rows),
                    alignment_);
  }
  return size;
}

absl::Status GgufWriter::WriteTo(internal::GgufSink& sink) const {
  const std::string header = EncodeHeader();
  RETURN_IF_ERROR(sink.Write(header.data(), header.size()));
  uint64_t pos = 0;  // within the data section
  for (const TensorEntry& e : tensors_) {
    if (e.fill_row) {
      for (int64_t row = 0; row < e.rows; ++row) {
        ASSIGN_OR_RETURN(uint8_t * dst, sink.Claim(e.row_bytes));
        std::memset(dst, 0, e.row_bytes);
        e.fill_row(row, dst);
      }
    } else {
      RETURN_IF_ERROR(sink.Write(e.data.data(), e.data.size()));
    }
    pos += e.row_bytes * static_cast<uint64_t>(e.rows);
    const uint64_t padded = AlignUp(pos, alignment_);
    RETURN_IF_ERROR(sink.Zeros(padded - pos));
    pos = padded;
  }
  return absl::OkStatus();
}

std::vector<uint8_t> GgufWriter::Serialize() const {
  std::vector<uint8_t> out;
  out.reserve(FileSize());
  VectorSink sink(out);
  WriteTo(sink).IgnoreError();  // a VectorSink never fails
  return out;
}

absl::Status GgufWriter::WriteFile(const std::string& path) const {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, StrCat(path, ": cannot create"));
  FileSink sink(fd, path);
  absl::Status status = WriteTo(sink);
  if (status.ok()) status = sink.Flush();
  if (::close(fd) != 0 && status.ok()) {
    status = absl::ErrnoToStatus(errno, StrCat(path, ": close failed"));
  }
  if (!status.ok()) ::unlink(path.c_str());
  return status;
}

}  // namespace strata::gguf
