#include "gguf/reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "common/strings.h"

namespace strata::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian u32
constexpr int kMaxArrayDepth = 4;
constexpr uint64_t kMaxNameLength = 1 << 16;
constexpr int kMaxDims = 4;

int FixedSize(uint32_t type) { return GgufTypeSize(static_cast<GgufType>(type)); }

// Bounds-checked little-endian cursor over the mapping.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& name)
      : data_(data), size_(size), name_(name) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  absl::Status Truncated(std::string_view what) const {
    return absl::DataLossError(
        absl::StrFormat("%s: truncated while reading %s at byte %d", name_, what, pos_));
  }
  absl::Status Invalid(std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s (at byte %d)", name_, what, pos_));
  }

  template <typename T>
  absl::StatusOr<T> Read(std::string_view what) {
    if (remaining() < sizeof(T)) return Truncated(what);
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  absl::StatusOr<std::string_view> ReadString(std::string_view what) {
    ASSIGN_OR_RETURN(uint64_t len, Read<uint64_t>(what));
    if (len > remaining()) {
      return Invalid(StrCat(
          what, ": string length ", len, " exceeds the ", remaining(), " bytes left in the file"));
    }
    std::string_view s(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return s;
  }

  absl::Status Skip(uint64_t bytes, std::string_view what) {
    if (bytes > remaining()) return Truncated(what);
    pos_ += bytes;
    return absl::OkStatus();
  }

  const uint8_t* here() const { return data_ + pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& name_;
};

absl::Status ReadValue(Reader& r, uint32_t type, std::string_view key, int depth, GgufValue& out);

absl::Status ReadArray(Reader& r, std::string_view key, int depth, GgufValue& out) {
  if (depth >= kMaxArrayDepth) return r.Invalid(StrCat("key '", key, "': arrays nested too deep"));
  ASSIGN_OR_RETURN(uint32_t elem_type, r.Read<uint32_t>("array element type"));
  ASSIGN_OR_RETURN(uint64_t count, r.Read<uint64_t>("array length"));
  int size = FixedSize(elem_type);
  if (size < 0) {
    return r.Invalid(StrCat("key '", key, "': unknown array element type ", elem_type));
  }
  out.elem_type = static_cast<GgufType>(elem_type);
  out.count = count;
  if (size > 0) {
    if (count > r.remaining() / size) {
      return r.Invalid(
          StrCat("key '", key, "': array of ", count, " elements does not fit in the file"));
    }
    out.raw = r.here();
    return r.Skip(count * size, "array data");
  }
  // Strings and nested arrays take at least 8 bytes each: reject absurd counts before reserving.
  if (count > r.remaining() / 8) {
    return r.Invalid(
        StrCat("key '", key, "': array of ", count, " elements does not fit in the file"));
  }
  if (elem_type == static_cast<uint32_t>(GgufType::kString)) {
    out.strings.reserve(count);
    for (uint64_t i = 0; i < count; ++i) {
      ASSIGN_OR_RETURN(std::string_view s, r.ReadString("array string"));
      out.strings.push_back(s);
    }
    return absl::OkStatus();
  }
  // Nested arrays: validated and skipped.
  for (uint64_t i = 0; i < count; ++i) {
    GgufValue inner;
    RETURN_IF_ERROR(ReadValue(r, elem_type, key, depth + 1, inner));
  }
  return absl::OkStatus();
}

absl::Status ReadValue(Reader& r, uint32_t type, std::string_view key, int depth, GgufValue& out) {
  out.type = static_cast<GgufType>(type);
  switch (out.type) {
    case GgufType::kUint8: {
      ASSIGN_OR_RETURN(uint8_t v, r.Read<uint8_t>("u8"));
      out.u = v;
      out.i = v;
      break;
    }
    case GgufType::kInt8: {
      ASSIGN_OR_RETURN(int8_t v, r.Read<int8_t>("i8"));
      out.i = v;
      out.u = static_cast<uint64_t>(v);
      break;
    }
    case GgufType::kUint16: {
      ASSIGN_OR_RETURN(uint16_t v, r.Read<uint16_t>("u16"));
      out.u = v;
      out.i = v;
      break;
    }
    case GgufType::kInt16: {
      ASSIGN_OR_RETURN(int16_t v, r.Read<int16_t>("i16"));
      out.i = v;
      out.u = static_cast<uint64_t>(v);
      break;
    }
    case GgufType::kUint32: {
      ASSIGN_OR_RETURN(uint32_t v, r.Read<uint32_t>("u32"));
      out.u = v;
      out.i = v;
      break;
    }
    case GgufType::kInt32: {
      ASSIGN_OR_RETURN(int32_t v, r.Read<int32_t>("i32"));
      out.i = v;
      out.u = static_cast<uint64_t>(v);
      break;
    }
    case GgufType::kUint64: {
      ASSIGN_OR_RETURN(uint64_t v, r.Read<uint64_t>("u64"));
      out.u = v;
      out.i = static_cast<int64_t>(v);
      break;
    }
    case GgufType::kInt64: {
      ASSIGN_OR_RETURN(int64_t v, r.Read<int64_t>("i64"));
      out.i = v;
      out.u = static_cast<uint64_t>(v);
      break;
    }
    case GgufType::kFloat32: {
      ASSIGN_OR_RETURN(float v, r.Read<float>("f32"));
      out.f = v;
      break;
    }
    case GgufType::kFloat64: {
      ASSIGN_OR_RETURN(double v, r.Read<double>("f64"));
      out.f = v;
      break;
    }
    case GgufType::kBool: {
      ASSIGN_OR_RETURN(uint8_t v, r.Read<uint8_t>("bool"));
      if (v > 1) return r.Invalid(StrCat("key '", key, "': bool value ", int{v}));
      out.b = v != 0;
      break;
    }
    case GgufType::kString: {
      ASSIGN_OR_RETURN(out.str, r.ReadString("string value"));
      break;
    }
    case GgufType::kArray:
      return ReadArray(r, key, depth, out);
    default:
      return r.Invalid(StrCat("key '", key, "': unknown value type ", type));
  }
  return absl::OkStatus();
}

}  // namespace

int GgufTypeSize(GgufType type) {
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
    case GgufType::kString:
    case GgufType::kArray:
      return 0;
  }
  return -1;
}

std::string_view GgufTypeName(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
      return "uint8";
    case GgufType::kInt8:
      return "int8";
    case GgufType::kUint16:
      return "uint16";
    case GgufType::kInt16:
      return "int16";
    case GgufType::kUint32:
      return "uint32";
    case GgufType::kInt32:
      return "int32";
    case GgufType::kFloat32:
      return "float32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kUint64:
      return "uint64";
    case GgufType::kInt64:
      return "int64";
    case GgufType::kFloat64:
      return "float64";
  }
  return "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kUint16:
    case GgufType::kInt16:
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kUint64:
    case GgufType::kInt64:
      return true;
    default:
      return false;
  }
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string msg = StrCat(path, ": cannot open: ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(StrCat(path, ": not a regular file"));
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return absl::DataLossError(StrCat(path, ": empty file, not a GGUF model"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;  // before close() can overwrite it
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::InternalError(StrCat(path, ": mmap failed: ", std::strerror(mmap_errno)));
  }
  // Weights are read by layer span, not sequentially: do not let readahead pull in other spans.
  ::madvise(map, size, MADV_RANDOM);
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->name_ = path;
  file->base_ = static_cast<const uint8_t*>(map);
  file->size_ = size;
  file->mapping_ = map;
  RETURN_IF_ERROR(file->ParseAll());
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(const uint8_t* data,
                                                          size_t size,
                                                          std::string name) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->name_ = std::move(name);
  file->base_ = data;
  file->size_ = size;
  RETURN_IF_ERROR(file->ParseAll());
  return file;
}

GgufFile::~GgufFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, size_);
}

absl::Status GgufFile::ParseAll() {
  Reader r(base_, size_, name_);
  ASSIGN_OR_RETURN(uint32_t magic, r.Read<uint32_t>("magic"));
  if (magic != kMagic) return r.Invalid("bad magic: not a GGUF file");
  ASSIGN_OR_RETURN(version_, r.Read<uint32_t>("version"));
  if (version_ != 2 && version_ != 3) {
    return r.Invalid(StrCat("unsupported GGUF version ", version_, " (supported: 2, 3)"));
  }
  ASSIGN_OR_RETURN(uint64_t tensor_count, r.Read<uint64_t>("tensor count"));
  ASSIGN_OR_RETURN(uint64_t kv_count, r.Read<uint64_t>("metadata count"));
  // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at least
  // 8 + 4 + 8 + 4 + 8. Reject counts the file cannot hold before reserving anything.
  if (kv_count > r.remaining() / 13) {
    return r.Invalid(StrCat("metadata count ", kv_count, " does not fit in the file"));
  }
  if (tensor_count > r.remaining() / 32) {
    return r.Invalid(StrCat("tensor count ", tensor_count, " does not fit in the file"));
  }

  keys_.reserve(kv_count);
  for (uint64_t k = 0; k < kv_count; ++k) {
    ASSIGN_OR_RETURN(std::string_view key, r.ReadString("metadata key"));
    if (key.size() > kMaxNameLength) return r.Invalid("metadata key longer than 64 KiB");
    ASSIGN_OR_RETURN(uint32_t type, r.Read<uint32_t>("metadata value type"));
    GgufValue value;
    RETURN_IF_ERROR(ReadValue(r, type, key, 0, value));
    if (!values_.emplace(key, std::move(value)).second) {
      return r.Invalid(StrCat("duplicate metadata key '", key, "'"));
    }
    keys_.push_back(key);
  }

  if (const GgufValue* align = Find("general.alignment")) {
    if (align->type != GgufType::kUint32 || align->u == 0 || (align->u & (align->u - 1)) != 0) {
      return r.Invalid("general.alignment must be a power-of-two uint32");
    }
    alignment_ = align->u;
  }

  tensors_.reserve(tensor_count);
  for (uint64_t t = 0; t < tensor_count; ++t) {
    GgufTensorInfo info;
    ASSIGN_OR_RETURN(std::string_view name, r.ReadString("tensor name"));
    if (name.size() > kMaxNameLength) return r.Invalid("tensor name longer than 64 KiB");
    info.name = std::string(name);
    ASSIGN_OR_RETURN(uint32_t ndim, r.Read<uint32_t>("tensor dimension count"));
    if (ndim == 0 || ndim > kMaxDims) {
      return r.Invalid(StrCat("tensor '", info.name, "' has ", ndim, " dimensions (1..4)"));
    }
    info.ndim = static_cast<int>(ndim);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < ndim; ++d) {
      ASSIGN_OR_RETURN(uint64_t dim, r.Read<uint64_t>("tensor dimension"));
      if (dim == 0 || dim > (uint64_t{1} << 40) || numel > (uint64_t{1} << 46) / dim) {
        return r.Invalid(StrCat("tensor '", info.name, "' has an absurd dimension ", dim));
      }
      numel *= dim;
      info.shape[ndim - 1 - d] = static_cast<int64_t>(dim);  // outermost first
    }
    ASSIGN_OR_RETURN(uint32_t ggml_type, r.Read<uint32_t>("tensor type"));
    auto dtype = kernels::DTypeFromGgml(ggml_type);
    if (!dtype.ok()) {
      return r.Invalid(StrCat("tensor '", info.name, "': ", dtype.status().message()));
    }
    info.dtype = *dtype;
    const kernels::DTypeInfo& dinfo = kernels::Info(info.dtype);
    int64_t inner = info.shape[ndim - 1];
    if (inner % dinfo.block_size != 0) {
      return r.Invalid(StrCat("tensor '",
                              info.name,
                              "': row of ",
                              inner,
                              " elements is not a multiple of the ",
                              dinfo.name,
                              " block size ",
                              dinfo.block_size));
    }
    info.bytes = (numel / dinfo.block_size) * dinfo.block_bytes;
    ASSIGN_OR_RETURN(info.offset, r.Read<uint64_t>("tensor offset"));
    if (info.offset % alignment_ != 0) {
      return r.Invalid(StrCat("tensor '",
                              info.name,
                              "': offset ",
                              info.offset,
                              " is not a multiple of the alignment ",
                              alignment_));
    }
    tensors_.push_back(std::move(info));
  }

  data_offset_ = (r.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (data_offset_ > size_) {
    if (tensors_.empty()) {
      data_offset_ = size_;
    } else {
      return absl::DataLossError(StrCat(name_, ": truncated before the tensor data"));
    }
  }
  const size_t data_size = size_ - data_offset_;
  for (GgufTensorInfo& info : tensors_) {
    if (info.offset > data_size || info.bytes > data_size - info.offset) {
      return absl::DataLossError(absl::StrFormat(
          "%s: tensor '%s' data [%d, %d) lies outside the file's %d data bytes (truncated?)",
          name_,
          info.name,
          info.offset,
          info.offset + info.bytes,
          data_size));
    }
    info.data = base_ + data_offset_ + info.offset;
  }
  tensor_index_.reserve(tensors_.size());
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (!tensor_index_.emplace(tensors_[i].name, i).second) {
      return absl::InvalidArgumentError(
          StrCat(name_, ": duplicate tensor name '", tensors_[i].name, "'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<const GgufTensorInfo*> GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  if (it == tensor_index_.end()) {
    return absl::NotFoundError(StrCat(name_, ": tensor '", name, "' is missing"));
  }
  return &tensors_[it->second];
}

kernels::Tensor GgufFile::View(const GgufTensorInfo& info) {
  kernels::Tensor t;
  t.data = const_cast<uint8_t*>(info.data);
  t.dtype = info.dtype;
  t.ndim = info.ndim;
  t.shape = info.shape;
  return t;
}

void GgufFile::Prefetch(const GgufTensorInfo& info) const {
  if (mapping_ == nullptr || info.bytes == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  uintptr_t begin = reinterpret_cast<uintptr_t>(info.data) & ~(page - 1);
  uintptr_t end = reinterpret_cast<uintptr_t>(info.data) + info.bytes;
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);
}

}  // namespace strata::gguf
