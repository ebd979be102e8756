#include "gguf/requantize.h"

#include <cstdio>
#include <filesystem>
#include <vector>

#include "common/status.h"
#include "common/strings.h"
#include "gguf/reader.h"
#include "gguf/writer.h"
#include "kernels/quant.h"

namespace strata::gguf {
namespace {

using kernels::DType;

// llama.cpp's `general.file_type` for a file whose matrices are mostly `type`.
int FileType(DType type) {
  switch (type) {
    case DType::kF32:
      return 0;
    case DType::kF16:
      return 1;
    case DType::kQ4_0:
      return 2;
    case DType::kQ4_1:
      return 3;
    case DType::kQ8_0:
      return 7;
    case DType::kQ4_K:
      return 15;  // Q4_K_M
    case DType::kQ6_K:
      return 18;
    case DType::kBF16:
      return 32;
    default:
      return -1;
  }
}

bool IsWeightType(DType type) {
  switch (type) {
    case DType::kQ8_1:
    case DType::kQ8_K:
      return false;
    default:
      return true;
  }
}

}  // namespace

absl::StatusOr<RequantizeReport> Requantize(const std::string& in,
                                            const std::string& out,
                                            const RequantizeOptions& options) {
  if (!IsWeightType(options.type)) {
    return absl::InvalidArgumentError(
        StrCat(kernels::Info(options.type).name, " is an activation format, not a weight type"));
  }
  std::error_code ec;
  if (std::filesystem::equivalent(in, out, ec)) {
    return absl::InvalidArgumentError(StrCat("the output ", out, " is the input file"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(in));
  ASSIGN_OR_RETURN(std::string_view arch, file->GetString("general.architecture"));
  const std::string block_count = StrCat(arch, ".block_count");
  ASSIGN_OR_RETURN(const uint64_t n_layer, file->GetUint(block_count));
  if (options.layers < 0 || static_cast<uint64_t>(options.layers) > n_layer) {
    return absl::InvalidArgumentError(
        StrCat("cannot keep ", options.layers, " layers of ", n_layer));
  }
  const int keep_layers = options.layers == 0 ? static_cast<int>(n_layer) : options.layers;
  // blk.N.* for N >= keep_layers is left out.
  auto dropped = [&](const std::string& name) {
    int n = 0;
    return std::sscanf(name.c_str(), "blk.%d.", &n) == 1 && n >= keep_layers;
  };

  GgufWriter w;
  if (file->alignment() != GgufWriter::kDefaultAlignment) {
    RETURN_IF_ERROR(w.set_alignment(static_cast<uint32_t>(file->alignment())));
  }
  for (std::string_view key : file->keys()) {
    RETURN_IF_ERROR(w.SetValue(key, *file->Find(key)));
  }
  if (const int ft = FileType(options.type); ft >= 0) w.SetUint32("general.file_type", ft);
  w.SetUint32(block_count, static_cast<uint32_t>(keep_layers));

  RequantizeReport report;
  int converted_done = 0;
  int to_convert = 0;
  const int block = kernels::Info(options.type).block_size;
  for (const GgufTensorInfo& t : file->tensors()) {
    if (dropped(t.name)) {
      ++report.dropped;
      continue;
    }
    const int64_t cols = t.shape[t.ndim - 1];
    std::vector<int64_t> shape(t.shape.begin(), t.shape.begin() + t.ndim);
    const bool matrix = t.ndim >= 2;
    const bool embedding = t.name == "token_embd.weight";
    const bool fits = cols % block == 0;
    if (!matrix || (embedding && options.keep_embeddings) || !fits || t.dtype == options.type) {
      RETURN_IF_ERROR(w.AddTensor(t.name, t.dtype, shape, t.data, t.bytes));
      ++report.kept;
      if (matrix && !fits) ++report.unfit;
      continue;
    }
    const size_t in_row = kernels::RowBytes(t.dtype, cols);
    const DType from = t.dtype, to = options.type;
    const uint8_t* base = t.data;  // into `file`'s mapping, alive until WriteFile returns
    const int64_t last_row = static_cast<int64_t>(t.bytes / in_row) - 1;
    std::vector<float> values(static_cast<size_t>(cols));
    RETURN_IF_ERROR(w.AddTensorGenerated(
        t.name,
        to,
        shape,
        [&, base, in_row, from, to, cols, last_row, values](int64_t row, uint8_t* dst) mutable {
          kernels::DequantizeRowRef(from, base + row * in_row, values.data(), cols);
          kernels::QuantizeRowRef(to, values.data(), dst, cols);
          if (row == last_row && options.progress) options.progress(++converted_done, to_convert);
        }));
    ++report.converted;
  }
  to_convert = report.converted;
  RETURN_IF_ERROR(w.WriteFile(out));
  report.bytes_in = file->size();
  report.bytes_out = std::filesystem::file_size(out, ec);
  return report;
}

}  // namespace strata::gguf
