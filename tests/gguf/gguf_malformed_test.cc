// One test per kind of malformed GGUF file, each asserting the status code and that the message
// names the problem.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/strings.h"
#include "gguf/reader.h"
#include "gguf/writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "tests/gguf/gguf_testing.h"

namespace strata::gguf {
namespace {

using kernels::DType;
using testkit::Bytes;
using testkit::ParseBytes;
using testkit::RandomBytes;

// Offset just past the first occurrence of GGUF string `s` (u64 length + bytes) in `bytes`.
size_t After(const Bytes& bytes, std::string_view s) {
  std::string needle(8, '\0');
  const uint64_t len = s.size();
  std::memcpy(needle.data(), &len, 8);
  needle += s;
  auto it = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
  EXPECT_NE(it, bytes.end()) << "'" << s << "' not found";
  return static_cast<size_t>(it - bytes.begin()) + needle.size();
}

template <typename T>
void Patch(Bytes& bytes, size_t offset, T value) {
  ASSERT_LE(offset + sizeof(T), bytes.size());
  std::memcpy(bytes.data() + offset, &value, sizeof(T));
}

template <typename T>
T Peek(const Bytes& bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

// Raw little-endian encoder for files the writer refuses to produce.
struct RawBuilder {
  Bytes out;
  void U32(uint32_t v) { Append(&v, 4); }
  void U64(uint64_t v) { Append(&v, 8); }
  void Str(std::string_view s) {
    U64(s.size());
    Append(s.data(), s.size());
  }
  void Append(const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  }
  void Header(uint64_t tensors, uint64_t kvs) {
    Append("GGUF", 4);
    U32(3);
    U64(tensors);
    U64(kvs);
  }
};

// A small valid file: metadata of a few kinds and three tensors, the last of which ends exactly
// at the end of the file (F32 {8} = 32 bytes, no padding), so every strict prefix is invalid.
gguf::GgufWriter& FillSmall(gguf::GgufWriter& w) {
  w.SetString("general.architecture", "llama");
  w.SetUint32("llama.block_count", 2);
  w.SetArray("tokenizer.ggml.scores", std::vector<float>{0.5f, -1.0f, 2.0f});
  w.SetArray("tokenizer.ggml.tokens", std::vector<std::string>{"<s>", "hello", ""});
  w.SetBool("test.flag", true);
  Bytes a = RandomBytes(2 * 4 * 4, 1), b = RandomBytes(2 * 2 * 34, 2), c = RandomBytes(32, 3);
  EXPECT_TRUE(w.AddTensor("t.a", DType::kF32, {2, 4}, a.data(), a.size()).ok());
  EXPECT_TRUE(w.AddTensor("t.q8", DType::kQ8_0, {2, 64}, b.data(), b.size()).ok());
  EXPECT_TRUE(w.AddTensor("t.c", DType::kF32, {8}, c.data(), c.size()).ok());
  return w;
}

Bytes SmallFile() {
  gguf::GgufWriter w;
  return FillSmall(w).Serialize();
}

// ---------------------------------------------------------------------------------------------
// Malformed files.

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
constexpr auto kDataLoss = absl::StatusCode::kDataLoss;

TEST(GgufMalformedTest, BadMagic) {
  Bytes bytes = SmallFile();
  bytes[0] = 'X';
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, "bad magic");
}

TEST(GgufMalformedTest, UnknownVersion) {
  for (uint32_t version : {0u, 1u, 4u, 0xFFFFFFFFu}) {
    Bytes bytes = SmallFile();
    Patch<uint32_t>(bytes, 4, version);
    EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, StrCat("unsupported GGUF version ", version));
  }
}

TEST(GgufMalformedTest, EveryTruncationIsAnError) {
  const Bytes bytes = SmallFile();
  ASSERT_TRUE(ParseBytes(bytes).ok());
  for (size_t len = 0; len < bytes.size(); ++len) {
    const Bytes prefix(bytes.begin(), bytes.begin() + len);
    const absl::Status s = ParseBytes(prefix).status();
    ASSERT_FALSE(s.ok()) << "prefix of " << len << " bytes parsed";
    ASSERT_TRUE(s.code() == kDataLoss || s.code() == kInvalid) << s;
  }
}

TEST(GgufMalformedTest, TruncationInsideTrailingPaddingIsAccepted) {
  // With a 64-byte alignment the last tensor (32 bytes) is followed by 32 bytes of padding: a
  // file cut inside the padding still holds every tensor.
  gguf::GgufWriter w;
  ASSERT_TRUE(FillSmall(w).set_alignment(64).ok());
  const Bytes bytes = w.Serialize();
  auto file = ParseBytes(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const gguf::GgufTensorInfo& last = (*file)->tensors().back();
  const size_t end = (*file)->data_offset() + last.offset + last.bytes;
  ASSERT_EQ(end + 32, bytes.size());
  for (size_t len = 0; len <= bytes.size(); ++len) {
    const Bytes prefix(bytes.begin(), bytes.begin() + len);
    ASSERT_EQ(ParseBytes(prefix).ok(), len >= end) << len;
  }
}

TEST(GgufMalformedTest, TensorDataOutsideTheFile) {
  Bytes bytes = SmallFile();
  bytes.pop_back();
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kDataLoss, "tensor 't.c' data");
  bytes = SmallFile();
  const size_t info = After(bytes, "t.a");  // ndim, 2 dims, type, offset
  Patch<uint64_t>(bytes, info + 4 + 16 + 4, uint64_t{1} << 62);
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kDataLoss, "lies outside the file");
}

TEST(GgufMalformedTest, MisalignedTensorOffset) {
  Bytes bytes = SmallFile();
  const size_t info = After(bytes, "t.q8");
  const size_t offset_at = info + 4 + 16 + 4;
  Patch<uint64_t>(bytes, offset_at, Peek<uint64_t>(bytes, offset_at) + 1);
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, "not a multiple of the alignment 32");
}

TEST(GgufMalformedTest, AbsurdCounts) {
  Bytes bytes = SmallFile();
  Patch<uint64_t>(bytes, 8, uint64_t{1} << 60);
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, "tensor count 1152921504606846976");
  bytes = SmallFile();
  Patch<uint64_t>(bytes, 16, uint64_t{1} << 60);
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, "metadata count 1152921504606846976");
}

TEST(GgufMalformedTest, AbsurdDimensions) {
  for (uint64_t dim : {uint64_t{1} << 60, std::numeric_limits<uint64_t>::max(), uint64_t{0}}) {
    Bytes bytes = SmallFile();
    Patch<uint64_t>(bytes, After(bytes, "t.a") + 4 + 8, dim);  // the outer dimension
    EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, StrCat("absurd dimension ", dim));
  }
  // Each dimension plausible, their product not.
  Bytes bytes = SmallFile();
  Patch<uint64_t>(bytes, After(bytes, "t.a") + 4, uint64_t{1} << 32);
  Patch<uint64_t>(bytes, After(bytes, "t.a") + 4 + 8, uint64_t{1} << 32);
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, "absurd dimension");
}

TEST(GgufMalformedTest, DimensionCountOutOfRange) {
  for (uint32_t ndim : {0u, 5u, 0xFFFFFFFFu}) {
    Bytes bytes = SmallFile();
    Patch<uint32_t>(bytes, After(bytes, "t.a"), ndim);
    EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, StrCat("'t.a' has ", ndim, " dimensions"));
  }
}

TEST(GgufMalformedTest, UnknownTensorType) {
  Bytes bytes = SmallFile();
  Patch<uint32_t>(bytes, After(bytes, "t.a") + 4 + 16, 99);
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, "unsupported tensor type 99");
}

TEST(GgufMalformedTest, UnknownMetadataValueType) {
  Bytes bytes = SmallFile();
  Patch<uint32_t>(bytes, After(bytes, "llama.block_count"), 13);
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, "'llama.block_count': unknown value type 13");
  bytes = SmallFile();
  Patch<uint32_t>(bytes, After(bytes, "tokenizer.ggml.scores") + 4, 77);  // element type
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, "unknown array element type 77");
}

TEST(GgufMalformedTest, StringLengthLargerThanTheFile) {
  for (uint64_t len : {uint64_t{4096}, uint64_t{1} << 63, std::numeric_limits<uint64_t>::max()}) {
    Bytes bytes = SmallFile();
    Patch<uint64_t>(bytes, After(bytes, "general.architecture") + 4, len);  // the value
    EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, StrCat("string length ", len, " exceeds"));
    bytes = SmallFile();
    Patch<uint64_t>(bytes, After(bytes, "test.flag") - 9 - 8, len);  // the key
    EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, StrCat("metadata key: string length ", len));
    bytes = SmallFile();
    Patch<uint64_t>(bytes, After(bytes, "t.c") - 3 - 8, len);  // a tensor name
    EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, StrCat("tensor name: string length ", len));
  }
}

TEST(GgufMalformedTest, ArrayCountLargerThanTheFile) {
  for (uint64_t count : {uint64_t{1000}, uint64_t{1} << 61, std::numeric_limits<uint64_t>::max()}) {
    Bytes bytes = SmallFile();
    Patch<uint64_t>(bytes, After(bytes, "tokenizer.ggml.scores") + 8, count);
    EXPECT_GGUF_ERROR(ParseBytes(bytes),
                      kInvalid,
                      StrCat("'tokenizer.ggml.scores': array of ", count, " elements"));
    bytes = SmallFile();
    Patch<uint64_t>(bytes, After(bytes, "tokenizer.ggml.tokens") + 8, count);
    EXPECT_GGUF_ERROR(ParseBytes(bytes),
                      kInvalid,
                      StrCat("'tokenizer.ggml.tokens': array of ", count, " elements"));
  }
}

// An array nested `levels` deep whose innermost array holds one u32.
Bytes NestedArrays(int levels) {
  RawBuilder b;
  b.Header(0, 1);
  b.Str("nested");
  b.U32(static_cast<uint32_t>(gguf::GgufType::kArray));
  for (int level = 1; level < levels; ++level) {
    b.U32(static_cast<uint32_t>(gguf::GgufType::kArray));
    b.U64(1);
  }
  b.U32(static_cast<uint32_t>(gguf::GgufType::kUint32));
  b.U64(1);
  b.U32(7);
  return b.out;
}

TEST(GgufMalformedTest, ArraysNestedTooDeep) {
  const Bytes four = NestedArrays(4);  // the parsed file points into it
  auto ok = ParseBytes(four);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->Find("nested")->elem_type, gguf::GgufType::kArray);
  EXPECT_GGUF_ERROR(ParseBytes(NestedArrays(5)), kInvalid, "'nested': arrays nested too deep");
  EXPECT_GGUF_ERROR(ParseBytes(NestedArrays(100000)), kInvalid, "nested too deep");
}

TEST(GgufMalformedTest, DuplicateKey) {
  gguf::GgufWriter w;
  w.SetUint32("key.one", 1);
  w.SetUint32("key.two", 2);
  Bytes bytes = w.Serialize();
  bytes[After(bytes, "key.two") - 3] = 'o';
  bytes[After(bytes, "key.owo") - 2] = 'n';
  bytes[After(bytes, "key.ono") - 1] = 'e';
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, "duplicate metadata key 'key.one'");
}

TEST(GgufMalformedTest, DuplicateTensorName) {
  Bytes bytes = SmallFile();
  bytes[After(bytes, "t.c") - 1] = 'a';
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, "duplicate tensor name 't.a'");
}

TEST(GgufMalformedTest, BadAlignment) {
  for (uint32_t alignment : {0u, 3u, 48u}) {
    gguf::GgufWriter w;
    w.SetUint32("general.alignment", alignment);  // the writer keeps an invalid value as given
    EXPECT_EQ(w.alignment(), 32u);
    EXPECT_GGUF_ERROR(ParseBytes(w.Serialize()), kInvalid, "general.alignment must be");
  }
  gguf::GgufWriter w;
  w.SetInt32("general.alignment", 64);
  EXPECT_GGUF_ERROR(ParseBytes(w.Serialize()), kInvalid, "power-of-two uint32");
  gguf::GgufWriter s;
  s.SetString("general.alignment", "32");
  EXPECT_GGUF_ERROR(ParseBytes(s.Serialize()), kInvalid, "power-of-two uint32");
}

TEST(GgufMalformedTest, RowNotAMultipleOfTheBlockSize) {
  Bytes bytes = SmallFile();
  Patch<uint64_t>(bytes, After(bytes, "t.q8") + 4, 48);  // innermost dimension, was 64
  EXPECT_GGUF_ERROR(ParseBytes(bytes),
                    kInvalid,
                    "'t.q8': row of 48 elements is not a multiple of the q8_0 block size 32");
}

TEST(GgufMalformedTest, BoolOutOfRange) {
  Bytes bytes = SmallFile();
  bytes[After(bytes, "test.flag") + 4] = 2;
  EXPECT_GGUF_ERROR(ParseBytes(bytes), kInvalid, "'test.flag': bool value 2");
}

}  // namespace
}  // namespace strata::gguf
