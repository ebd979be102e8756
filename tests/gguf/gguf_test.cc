// GgufWriter -> GgufFile round trips and the real default model. Malformed files are in
// gguf_malformed_test.cc.
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "common/strings.h"
#include "gguf/reader.h"
#include "gguf/writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "tests/gguf/gguf_testing.h"
#include "tests/testing/paths.h"

namespace strata::gguf {
namespace {

using kernels::DType;
using testkit::Bytes;
using testkit::ParseBytes;
using testkit::RandomBytes;

// Expects `expr` (a StatusOr) to be OK and its value to equal `expected`; stops the test if not OK.
#define EXPECT_OK_EQ(expr, expected)     \
  do {                                   \
    auto _v = (expr);                    \
    ASSERT_TRUE(_v.ok()) << _v.status(); \
    EXPECT_EQ(*_v, expected);            \
  } while (0)

absl::StatusOr<std::vector<std::string_view>> Deref(
    absl::StatusOr<const std::vector<std::string_view>*> s) {
  if (!s.ok()) return s.status();
  return **s;
}

std::string TempPath(std::string_view name) {
  return StrCat(::testing::TempDir(), "/gguf_test_", ::getpid(), "_", name);
}

// ---------------------------------------------------------------------------------------------
// Writer -> reader round trips.

class GgufVersionTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufVersionTest, RoundTripsEveryMetadataType) {
  gguf::GgufWriter w;
  ASSERT_TRUE(w.set_version(GetParam()).ok());
  w.SetUint8("u8", 255);
  w.SetInt8("i8", -128);
  w.SetUint16("u16", 65535);
  w.SetInt16("i16", -32768);
  w.SetUint32("u32", 4000000000u);
  w.SetInt32("i32", -2000000000);
  w.SetUint64("u64", std::numeric_limits<uint64_t>::max());
  w.SetInt64("i64", std::numeric_limits<int64_t>::min());
  w.SetFloat32("f32", 1.5f);
  w.SetFloat64("f64", -2.25e300);
  w.SetBool("bool.true", true);
  w.SetBool("bool.false", false);
  w.SetString("str", std::string("h\xC3\xA9llo\0world", 12));
  w.SetString("str.empty", "");
  w.SetArray("a.u8", std::vector<uint8_t>{0, 1, 255});
  w.SetArray("a.i8", std::vector<int8_t>{-128, 0, 127});
  w.SetArray("a.u16", std::vector<uint16_t>{0, 65535});
  w.SetArray("a.i16", std::vector<int16_t>{-32768, 32767});
  w.SetArray("a.u32", std::vector<uint32_t>{7, 4000000000u});
  w.SetArray("a.i32", std::vector<int32_t>{-1, 2});
  w.SetArray("a.u64", std::vector<uint64_t>{1, uint64_t{1} << 40});
  w.SetArray("a.i64", std::vector<int64_t>{-(int64_t{1} << 40), 3});
  w.SetArray("a.f32", std::vector<float>{0.25f, -8.0f});
  w.SetArray("a.f64", std::vector<double>{-0.5, 3.5});
  w.SetArray("a.bool", std::vector<bool>{true, false, true});
  w.SetArray("a.str", std::vector<std::string>{"a", "", "longer string"});
  w.SetArray("a.empty", std::vector<int32_t>{});
  w.SetArray("a.sv", std::vector<std::string_view>{"x", "yz"});
  const Bytes bytes = w.Serialize();
  ASSERT_EQ(bytes.size(), w.FileSize());

  auto file = ParseBytes(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const gguf::GgufFile& f = **file;
  EXPECT_EQ(f.version(), GetParam());
  EXPECT_EQ(f.keys().size(), w.metadata_count());
  EXPECT_EQ(f.keys().front(), "u8");
  EXPECT_EQ(f.keys().back(), "a.sv");
  EXPECT_EQ(f.tensors().size(), 0u);

  EXPECT_EQ(f.Find("u8")->type, gguf::GgufType::kUint8);
  EXPECT_OK_EQ(f.GetUint("u8"), 255u);
  EXPECT_EQ(f.Find("i8")->i, -128);
  EXPECT_OK_EQ(f.GetUint("u16"), 65535u);
  EXPECT_EQ(f.Find("i16")->i, -32768);
  EXPECT_OK_EQ(f.GetUint("u32"), 4000000000u);
  EXPECT_EQ(f.Find("i32")->i, -2000000000);
  EXPECT_OK_EQ(f.GetUint("u64"), std::numeric_limits<uint64_t>::max());
  EXPECT_OK_EQ(f.GetFloat("u64"), 18446744073709551615.0);
  EXPECT_EQ(f.Find("i64")->i, std::numeric_limits<int64_t>::min());
  EXPECT_OK_EQ(f.GetFloat("i64"), -9223372036854775808.0);
  EXPECT_GGUF_ERROR(f.GetUint("i8"), absl::StatusCode::kInvalidArgument, "non-negative");
  EXPECT_EQ(f.Find("f32")->type, gguf::GgufType::kFloat32);
  EXPECT_OK_EQ(f.GetFloat("f32"), 1.5);
  EXPECT_OK_EQ(f.GetFloat("f64"), -2.25e300);
  EXPECT_OK_EQ(f.GetBool("bool.true"), true);
  EXPECT_OK_EQ(f.GetBool("bool.false"), false);
  EXPECT_OK_EQ(f.GetString("str"), std::string_view("h\xC3\xA9llo\0world", 12));
  EXPECT_OK_EQ(f.GetString("str.empty"), "");

  EXPECT_OK_EQ(f.GetIntArray("a.u8"), (std::vector<int64_t>{0, 1, 255}));
  EXPECT_OK_EQ(f.GetIntArray("a.i8"), (std::vector<int64_t>{-128, 0, 127}));
  EXPECT_OK_EQ(f.GetIntArray("a.u16"), (std::vector<int64_t>{0, 65535}));
  EXPECT_OK_EQ(f.GetIntArray("a.i16"), (std::vector<int64_t>{-32768, 32767}));
  EXPECT_OK_EQ(f.GetIntArray("a.u32"), (std::vector<int64_t>{7, 4000000000}));
  EXPECT_OK_EQ(f.GetIntArray("a.i32"), (std::vector<int64_t>{-1, 2}));
  EXPECT_OK_EQ(f.GetIntArray("a.u64"), (std::vector<int64_t>{1, int64_t{1} << 40}));
  EXPECT_OK_EQ(f.GetIntArray("a.i64"), (std::vector<int64_t>{-(int64_t{1} << 40), 3}));
  EXPECT_OK_EQ(f.GetFloatArray("a.f32"), (std::vector<float>{0.25f, -8.0f}));
  EXPECT_OK_EQ(f.GetFloatArray("a.f64"), (std::vector<float>{-0.5f, 3.5f}));
  const gguf::GgufValue* bools = f.Find("a.bool");
  ASSERT_EQ(bools->elem_type, gguf::GgufType::kBool);
  ASSERT_EQ(bools->count, 3u);
  EXPECT_EQ(std::vector<uint8_t>(bools->raw, bools->raw + 3), (std::vector<uint8_t>{1, 0, 1}));
  EXPECT_OK_EQ(Deref(f.GetStringArray("a.str")),
               (std::vector<std::string_view>{"a", "", "longer string"}));
  EXPECT_EQ(f.Find("a.empty")->elem_type, gguf::GgufType::kInt32);
  EXPECT_TRUE(f.GetIntArray("a.empty")->empty());
  EXPECT_OK_EQ(Deref(f.GetStringArray("a.sv")), (std::vector<std::string_view>{"x", "yz"}));
  EXPECT_GGUF_ERROR(f.GetString("a.str"), absl::StatusCode::kInvalidArgument, "'a.str'");
  EXPECT_GGUF_ERROR(f.GetString("nope"), absl::StatusCode::kNotFound, "'nope'");
}

TEST_P(GgufVersionTest, RoundTripsTensorsOfEveryDType) {
  struct Case {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
  };
  const std::vector<Case> cases = {
      {"f32", DType::kF32, {3, 5}},
      {"f16", DType::kF16, {7}},
      {"bf16", DType::kBF16, {2, 3, 4}},
      {"q4_0", DType::kQ4_0, {4, 64}},
      {"q4_1", DType::kQ4_1, {2, 96}},
      {"q8_0", DType::kQ8_0, {1, 2, 3, 32}},
      {"q8_1", DType::kQ8_1, {32}},
      {"q4_k", DType::kQ4_K, {2, 256}},
      {"q6_k", DType::kQ6_K, {1, 512}},
      {"q8_k", DType::kQ8_K, {3, 256}},
  };
  for (uint32_t alignment : {1u, 32u, 64u, 4096u}) {
    SCOPED_TRACE(StrCat("alignment ", alignment));
    gguf::GgufWriter w;
    ASSERT_TRUE(w.set_version(GetParam()).ok());
    ASSERT_TRUE(w.set_alignment(alignment).ok());
    w.SetString("general.name", "tensors");
    std::vector<Bytes> data;
    for (const Case& c : cases) {
      int64_t rows = 1;
      for (size_t d = 0; d + 1 < c.shape.size(); ++d) rows *= c.shape[d];
      data.push_back(RandomBytes(kernels::RowBytes(c.dtype, c.shape.back()) * rows, data.size()));
      ASSERT_TRUE(
          w.AddTensor(c.name, c.dtype, c.shape, data.back().data(), data.back().size()).ok());
    }
    const Bytes bytes = w.Serialize();
    ASSERT_EQ(bytes.size(), w.FileSize());
    auto file = ParseBytes(bytes);
    ASSERT_TRUE(file.ok()) << file.status();
    const gguf::GgufFile& f = **file;
    EXPECT_EQ(f.alignment(), alignment);
    EXPECT_EQ(f.Find("general.alignment") != nullptr, alignment != 32);
    EXPECT_EQ(f.data_offset() % alignment, 0u);
    EXPECT_EQ(bytes.size() % alignment, 0u);
    ASSERT_EQ(f.tensors().size(), cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
      const gguf::GgufTensorInfo& t = f.tensors()[i];
      SCOPED_TRACE(t.name);
      EXPECT_EQ(t.name, cases[i].name);
      EXPECT_EQ(t.dtype, cases[i].dtype);
      ASSERT_EQ(t.ndim, static_cast<int>(cases[i].shape.size()));
      EXPECT_EQ(std::vector<int64_t>(t.shape.begin(), t.shape.begin() + t.ndim), cases[i].shape);
      EXPECT_EQ(t.offset % alignment, 0u);
      ASSERT_EQ(t.bytes, data[i].size());
      EXPECT_EQ(Bytes(t.data, t.data + t.bytes), data[i]);
      EXPECT_EQ(gguf::GgufFile::View(t).bytes(), t.bytes);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Versions, GgufVersionTest, ::testing::Values(2u, 3u));

TEST(GgufWriterTest, SettingAKeyAgainKeepsItsPosition) {
  gguf::GgufWriter w;
  w.SetUint32("a", 1);
  w.SetString("b", "x");
  w.SetString("a", "now a string");
  EXPECT_TRUE(w.RemoveKey("b"));
  EXPECT_FALSE(w.RemoveKey("b"));
  w.SetUint8("c", 3);
  const Bytes bytes = w.Serialize();
  auto file = ParseBytes(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->keys(), (std::vector<std::string_view>{"a", "c"}));
  EXPECT_OK_EQ((*file)->GetString("a"), "now a string");
}

TEST(GgufWriterTest, GeneratedTensorsEqualCopiedOnes) {
  auto fill = [](int64_t row, uint8_t* dst) {
    for (int i = 0; i < 68; ++i) dst[i] = static_cast<uint8_t>(row * 31 + i);
  };
  Bytes data(5 * 68);
  for (int64_t r = 0; r < 5; ++r) fill(r, data.data() + r * 68);
  gguf::GgufWriter copied, generated;
  ASSERT_TRUE(copied.AddTensor("w", DType::kQ8_0, {5, 64}, data.data(), data.size()).ok());
  std::vector<int64_t> rows_seen;
  ASSERT_TRUE(generated
                  .AddTensorGenerated("w",
                                      DType::kQ8_0,
                                      {5, 64},
                                      [&](int64_t row, uint8_t* dst) {
                                        rows_seen.push_back(row);
                                        fill(row, dst);
                                      })
                  .ok());
  EXPECT_EQ(generated.Serialize(), copied.Serialize());
  EXPECT_EQ(rows_seen, (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(GgufWriterTest, WriteFileStreamsTheSameBytesAsSerialize) {
  gguf::GgufWriter w;
  ASSERT_TRUE(w.set_alignment(64).ok());
  w.SetString("general.architecture", "llama");
  // A generated tensor larger than the 4 MiB write buffer, whose rows straddle buffer flushes, and
  // a copied one that bypasses the buffer.
  ASSERT_TRUE(w.AddTensorGenerated("gen", DType::kF32, {1100, 1000}, [](int64_t row, uint8_t* dst) {
                 float* f = reinterpret_cast<float*>(dst);
                 for (int i = 0; i < 1000; ++i) f[i] = static_cast<float>(row * 1000 + i);
               }).ok());
  const Bytes big = RandomBytes(5 << 20, 9);
  ASSERT_TRUE(w.AddTensor("big", DType::kF16, {5 << 19}, big.data(), big.size()).ok());
  const Bytes small = RandomBytes(20, 4);
  ASSERT_TRUE(w.AddTensor("small", DType::kQ4_1, {32}, small.data(), small.size()).ok());

  const std::string path = TempPath("stream.gguf");
  ASSERT_TRUE(w.WriteFile(path).ok());
  std::ifstream in(path, std::ios::binary);
  const Bytes written((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(written.size(), w.FileSize());
  EXPECT_TRUE(written == w.Serialize());

  auto file = gguf::GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto gen = (*file)->FindTensor("gen");
  ASSERT_TRUE(gen.ok());
  EXPECT_EQ(reinterpret_cast<const float*>((*gen)->data)[1000 * 1099 + 5], 1099005.0f);
  std::filesystem::remove(path);
}

TEST(GgufWriterTest, WriteFileReportsAMissingDirectory) {
  gguf::GgufWriter w;
  EXPECT_GGUF_ERROR(w.WriteFile("/nonexistent-dir/x.gguf"),
                    absl::StatusCode::kNotFound,
                    "/nonexistent-dir/x.gguf");
}

TEST(GgufWriterTest, RejectsInvalidTensorsAndSettings) {
  gguf::GgufWriter w;
  const Bytes data(4096);
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_GGUF_ERROR(w.set_version(1), kBad, "version 1");
  EXPECT_GGUF_ERROR(w.set_version(4), kBad, "version 4");
  EXPECT_GGUF_ERROR(w.set_alignment(0), kBad, "power of two");
  EXPECT_GGUF_ERROR(w.set_alignment(48), kBad, "power of two");
  EXPECT_GGUF_ERROR(w.AddTensor("x", DType::kF32, {4}, data.data(), 12), kBad, "12 bytes");
  EXPECT_GGUF_ERROR(w.AddTensor("x", DType::kF32, {}, data.data(), 4), kBad, "0 dimensions");
  EXPECT_GGUF_ERROR(
      w.AddTensor("x", DType::kF32, {1, 1, 1, 1, 1}, data.data(), 4), kBad, "5 dimensions");
  EXPECT_GGUF_ERROR(w.AddTensor("x", DType::kF32, {0, 4}, data.data(), 0), kBad, "dimension 0");
  EXPECT_GGUF_ERROR(w.AddTensor("x", DType::kF32, {-1, 4}, data.data(), 0), kBad, "dimension -1");
  EXPECT_GGUF_ERROR(w.AddTensor("x", DType::kQ4_0, {2, 48}, data.data(), 54),
                    kBad,
                    "not a multiple of the q4_0 block size 32");
  EXPECT_GGUF_ERROR(
      w.AddTensor("x", static_cast<DType>(99), {4}, data.data(), 16), kBad, "unsupported dtype 99");
  EXPECT_GGUF_ERROR(w.AddTensor(std::string(64, 'n'), DType::kF32, {1}, data.data(), 4),
                    kBad,
                    "name must be 1 to 63 bytes");
  EXPECT_GGUF_ERROR(w.AddTensor("x", DType::kF32, {1}, nullptr, 4), kBad, "null");
  EXPECT_GGUF_ERROR(w.AddTensorGenerated("x", DType::kF32, {1}, nullptr), kBad, "generator");
  ASSERT_TRUE(w.AddTensor("x", DType::kF32, {4}, data.data(), 16).ok());
  EXPECT_GGUF_ERROR(
      w.AddTensor("x", DType::kF32, {4}, data.data(), 16), absl::StatusCode::kAlreadyExists, "'x'");
  EXPECT_EQ(w.tensor_count(), 1u);
}

// The writer reproduces the default model byte for byte from what the reader exposes.
TEST(GgufWriterTest, RewritesTheDefaultModelByteForByte) {
  ASSERT_TRUE(testkit::DefaultModelPresent()) << testkit::DefaultModelPath();
  auto source = gguf::GgufFile::Open(testkit::DefaultModelPath());
  ASSERT_TRUE(source.ok()) << source.status();
  const gguf::GgufFile& src = **source;
  gguf::GgufWriter w;
  ASSERT_TRUE(w.set_version(src.version()).ok());
  for (std::string_view key : src.keys()) ASSERT_TRUE(w.SetValue(key, *src.Find(key)).ok()) << key;
  EXPECT_EQ(w.alignment(), src.alignment());
  for (const gguf::GgufTensorInfo& t : src.tensors()) {
    std::vector<int64_t> shape(t.shape.begin(), t.shape.begin() + t.ndim);
    ASSERT_TRUE(w.AddTensor(t.name, t.dtype, shape, t.data, t.bytes).ok()) << t.name;
  }
  const Bytes out = w.Serialize();
  ASSERT_EQ(out.size(), src.size());
  const auto mismatch = std::mismatch(out.begin(), out.end(), src.base());
  EXPECT_EQ(mismatch.first, out.end())
      << "first difference at byte " << mismatch.first - out.begin();
}

// ---------------------------------------------------------------------------------------------
// The real default model.

TEST(GgufFileTest, DefaultModelHasTheExpectedFacts) {
  ASSERT_TRUE(testkit::DefaultModelPresent()) << testkit::DefaultModelPath();
  auto file = gguf::GgufFile::Open(testkit::DefaultModelPath());
  ASSERT_TRUE(file.ok()) << file.status();
  const gguf::GgufFile& f = **file;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.tensors().size(), 272u);
  EXPECT_OK_EQ(f.GetString("general.architecture"), "llama");
  EXPECT_OK_EQ(f.GetUint("llama.block_count"), 30u);
  EXPECT_OK_EQ(f.GetUint("llama.embedding_length"), 576u);
  auto tokens = f.GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ((*tokens)->size(), 49152u);
  std::set<DType> dtypes;
  for (const gguf::GgufTensorInfo& t : f.tensors()) {
    dtypes.insert(t.dtype);
    EXPECT_GE(t.data, f.base() + f.data_offset());
    EXPECT_LE(t.data + t.bytes, f.base() + f.size());
  }
  EXPECT_EQ(dtypes, (std::set<DType>{DType::kF32, DType::kQ4_1, DType::kQ8_0}));
  auto embd = f.FindTensor("token_embd.weight");
  ASSERT_TRUE(embd.ok()) << embd.status();
  EXPECT_EQ((*embd)->ndim, 2);
  EXPECT_EQ((*embd)->shape[0], 49152);
  EXPECT_EQ((*embd)->shape[1], 576);
  EXPECT_GGUF_ERROR(f.FindTensor("no.such.tensor"), absl::StatusCode::kNotFound, "no.such.tensor");
}

TEST(GgufFileTest, MissingEmptyAndDirectoryPathsAreClearErrors) {
  EXPECT_GGUF_ERROR(gguf::GgufFile::Open("/nonexistent/model.gguf"),
                    absl::StatusCode::kNotFound,
                    "/nonexistent/model.gguf");
  const std::string empty = TempPath("empty.gguf");
  std::ofstream(empty).close();
  EXPECT_GGUF_ERROR(gguf::GgufFile::Open(empty), absl::StatusCode::kDataLoss, "empty file");
  std::filesystem::remove(empty);
  EXPECT_GGUF_ERROR(gguf::GgufFile::Open(::testing::TempDir()),
                    absl::StatusCode::kInvalidArgument,
                    "not a regular file");
}

}  // namespace
}  // namespace strata::gguf
