// Mutation fuzzing of GgufFile::Parse over the real default model: every mutated or truncated
// image must parse to OK or to INVALID_ARGUMENT / DATA_LOSS — never crash, hang or allocate
// absurdly — and whatever parses OK must only point inside the image.
//
// Mutations are applied in place to one in-memory copy of the model and undone after each parse,
// so an iteration costs one parse. Most land in the header (magic through tensor infos, ~1.8 MB):
// random bytes, high bits flipped in u64 length/count/dimension/offset fields, small changes to
// those fields, u32 type fields set to nearby or random values, and random truncations.
//
// Reproduce a failure with STRATA_FUZZ_SEED=<seed> (printed); STRATA_FUZZ_ITERATIONS overrides the
// count. Iteration i draws from its own generator seeded by (seed, i).
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gguf/reader.h"
#include "gguf/writer.h"
#include "gtest/gtest.h"
#include "tests/testing/paths.h"

namespace strata::gguf {
namespace {

using Bytes = std::vector<uint8_t>;

// Offsets of the structural fields of a valid GGUF image.
struct FieldMap {
  std::vector<size_t> u64s;  // counts, string lengths, array lengths, dimensions, tensor offsets
  std::vector<size_t> u32s;  // version, value and element types, dimension counts, tensor types
  size_t header_end = 0;     // end of the tensor infos
};

class FieldWalker {
 public:
  explicit FieldWalker(const Bytes& b) : b_(b) {}

  FieldMap Walk() {
    U32();  // magic
    map_.u32s.push_back(pos_);
    U32();
    const uint64_t tensors = U64Field(), kvs = U64Field();
    for (uint64_t k = 0; k < kvs; ++k) {
      pos_ += U64Field();  // key
      Value(U32Field());
    }
    for (uint64_t t = 0; t < tensors; ++t) {
      pos_ += U64Field();  // name
      const uint32_t ndim = U32Field();
      for (uint32_t d = 0; d < ndim; ++d) U64Field();
      U32Field();  // type
      U64Field();  // offset
    }
    map_.header_end = pos_;
    return map_;
  }

 private:
  static int FixedSize(uint32_t type) {
    constexpr int kSizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return kSizes[type];
  }
  void Value(uint32_t type) {
    if (type == static_cast<uint32_t>(gguf::GgufType::kString)) {
      pos_ += U64Field();
    } else if (type == static_cast<uint32_t>(gguf::GgufType::kArray)) {
      const uint32_t elem = U32Field();
      const uint64_t count = U64Field();
      if (FixedSize(elem) > 0) {
        pos_ += count * FixedSize(elem);
      } else {
        for (uint64_t i = 0; i < count; ++i) Value(elem);
      }
    } else {
      pos_ += FixedSize(type);
    }
  }
  uint32_t U32() {
    uint32_t v;
    std::memcpy(&v, b_.data() + pos_, 4);
    pos_ += 4;
    return v;
  }
  uint32_t U32Field() {
    map_.u32s.push_back(pos_);
    return U32();
  }
  uint64_t U64Field() {
    map_.u64s.push_back(pos_);
    uint64_t v;
    std::memcpy(&v, b_.data() + pos_, 8);
    pos_ += 8;
    return v;
  }

  const Bytes& b_;
  size_t pos_ = 0;
  FieldMap map_;
};

// Which iteration is running, for the crash handler.
uint64_t g_seed = 0;
volatile sig_atomic_t g_iteration = -1;

void WriteNumber(const char* label, uint64_t n) {
  char buf[64];
  size_t len = std::strlen(label);
  std::memcpy(buf, label, len);
  char digits[24];
  int d = 0;
  do {
    digits[d++] = static_cast<char>('0' + n % 10);
    n /= 10;
  } while (n > 0);
  while (d > 0) buf[len++] = digits[--d];
  [[maybe_unused]] ssize_t ignored = ::write(2, buf, len);
}

void OnCrash(int sig) {
  WriteNumber("\ngguf_fuzz_test crashed: STRATA_FUZZ_SEED=", g_seed);
  WriteNumber(" iteration=", static_cast<uint64_t>(g_iteration));
  WriteNumber(" signal=", static_cast<uint64_t>(sig));
  [[maybe_unused]] ssize_t ignored = ::write(2, "\n", 1);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

// Prints the seed and iteration on SIGSEGV/SIGBUS/SIGABRT while alive (sanitizers print their own
// reports, so it stands aside for them).
class CrashReporter {
 public:
  CrashReporter();
  ~CrashReporter();

 private:
  static constexpr int kSignals[] = {SIGSEGV, SIGBUS, SIGABRT};
  struct sigaction saved_[3] = {};
};

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;  // sanitizers reserve terabytes of address space
#else
constexpr bool kSanitized = false;
#endif

CrashReporter::CrashReporter() {
  if (kSanitized) return;
  struct sigaction action = {};
  action.sa_handler = OnCrash;
  for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &action, &saved_[i]);
}

CrashReporter::~CrashReporter() {
  g_iteration = -1;
  if (kSanitized) return;
  for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &saved_[i], nullptr);
}

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::strtoull(v, nullptr, 0) : fallback;
}

// Caps the address space at its current size plus `extra` bytes while alive, so an allocation
// sized by a corrupt count fails with std::bad_alloc instead of silently overcommitting.
class AddressSpaceCap {
 public:
  explicit AddressSpaceCap(uint64_t extra) {
    if (kSanitized || ::getrlimit(RLIMIT_AS, &saved_) != 0) return;
    std::ifstream statm("/proc/self/statm");
    uint64_t pages = 0;
    if (!(statm >> pages)) return;
    rlimit cap = saved_;
    cap.rlim_cur = pages * ::sysconf(_SC_PAGESIZE) + extra;
    if (saved_.rlim_cur != RLIM_INFINITY && saved_.rlim_cur < cap.rlim_cur) return;
    active_ = ::setrlimit(RLIMIT_AS, &cap) == 0;
  }
  ~AddressSpaceCap() {
    if (active_) ::setrlimit(RLIMIT_AS, &saved_);
  }
  bool active() const { return active_; }

 private:
  rlimit saved_{};
  bool active_ = false;
};

// Checks that everything a successful parse exposes lies inside the image, and reads its first
// and last bytes so that AddressSanitizer sees any escape.
void CheckInside(const gguf::GgufFile& f, const uint8_t* base, size_t size) {
  auto inside = [&](const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    return n == 0 || (b >= base && n <= size && b - base <= static_cast<ptrdiff_t>(size - n));
  };
  volatile uint8_t sink = 0;
  auto touch = [&](const void* p, size_t n) {
    if (n == 0) return;
    sink = sink + static_cast<const uint8_t*>(p)[0] + static_cast<const uint8_t*>(p)[n - 1];
  };
  for (std::string_view key : f.keys()) {
    ASSERT_TRUE(inside(key.data(), key.size()));
    const gguf::GgufValue& v = *f.Find(key);
    ASSERT_TRUE(inside(v.str.data(), v.str.size())) << key;
    touch(v.str.data(), v.str.size());
    for (std::string_view s : v.strings) {
      ASSERT_TRUE(inside(s.data(), s.size())) << key;
      touch(s.data(), s.size());
    }
    if (v.raw != nullptr && v.count > 0) {
      ASSERT_TRUE(inside(v.raw, 1)) << key;
      touch(v.raw, 1);
      // Typed accessors decode every element of fixed-size arrays.
      (void)f.GetIntArray(key);
      (void)f.GetFloatArray(key);
    }
  }
  for (const gguf::GgufTensorInfo& t : f.tensors()) {
    ASSERT_GE(t.data, base + f.data_offset()) << t.name;
    ASSERT_TRUE(inside(t.data, t.bytes)) << t.name;
    ASSERT_EQ(gguf::GgufFile::View(t).bytes(), t.bytes) << t.name;
    touch(t.data, t.bytes);
  }
}

TEST(GgufFuzzTest, MutatedDefaultModelNeverCrashes) {
  ASSERT_TRUE(testkit::DefaultModelPresent()) << testkit::DefaultModelPath();
  Bytes image;
  {
    std::ifstream in(testkit::DefaultModelPath(), std::ios::binary);
    image.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto clean = gguf::GgufFile::Parse(image.data(), image.size());
  ASSERT_TRUE(clean.ok()) << clean.status();
  const FieldMap fields = FieldWalker(image).Walk();
  ASSERT_LE(fields.header_end, (*clean)->data_offset());
  ASSERT_GT(fields.header_end, size_t{1} << 20);
  const Bytes original_header(image.begin(), image.begin() + fields.header_end);

  g_seed = EnvOr("STRATA_FUZZ_SEED", 20240601);
  const uint64_t iterations = EnvOr("STRATA_FUZZ_ITERATIONS", 3000);
  std::cout << "STRATA_FUZZ_SEED=" << g_seed << " STRATA_FUZZ_ITERATIONS=" << iterations << "\n";

  std::map<absl::StatusCode, int> outcomes;
  double slowest_ms = 0;
  {
    CrashReporter reporter;
    AddressSpaceCap cap(uint64_t{3} << 29);  // 1.5 GiB more than the test already maps
    std::cout << "address space cap " << (cap.active() ? "on" : "off (sanitizer)") << "\n";
    std::vector<std::pair<size_t, uint8_t>> undo;
    for (uint64_t it = 0; it < iterations; ++it) {
      g_iteration = static_cast<sig_atomic_t>(it);
      std::mt19937_64 rng(g_seed * 0x9E3779B97F4A7C15ull + it);
      auto below = [&](uint64_t n) {
        return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng);
      };
      auto set_byte = [&](size_t at, uint8_t value) {
        undo.emplace_back(at, image[at]);
        image[at] = value;
      };
      auto set_u64 = [&](size_t at, uint64_t value) {
        for (int i = 0; i < 8; ++i) set_byte(at + i, static_cast<uint8_t>(value >> (8 * i)));
      };
      auto get_u64 = [&](size_t at) {
        uint64_t v;
        std::memcpy(&v, image.data() + at, 8);
        return v;
      };

      const int mutations = 1 + static_cast<int>(below(8));
      for (int m = 0; m < mutations; ++m) {
        const uint64_t kind = below(100);
        if (kind < 35) {  // random byte in the header
          set_byte(below(fields.header_end), static_cast<uint8_t>(rng()));
        } else if (kind < 55) {  // flip a high bit of a length/count/dimension/offset
          const size_t at = fields.u64s[below(fields.u64s.size())];
          set_u64(at, get_u64(at) ^ (uint64_t{1} << (24 + below(40))));
        } else if (kind < 65) {  // nudge one
          const size_t at = fields.u64s[below(fields.u64s.size())];
          set_u64(at, get_u64(at) + below(33) - 16);
        } else if (kind < 80) {  // a type field: a nearby id or anything
          const size_t at = fields.u32s[below(fields.u32s.size())];
          const uint32_t value = below(4) == 0 ? static_cast<uint32_t>(rng()) : below(40);
          for (int i = 0; i < 4; ++i) set_byte(at + i, static_cast<uint8_t>(value >> (8 * i)));
        } else if (kind < 90) {  // the first 64 bytes: magic, version, counts, first key
          set_byte(below(64), static_cast<uint8_t>(rng()));
        } else {  // anywhere, tensor data included
          set_byte(below(image.size()), static_cast<uint8_t>(rng()));
        }
      }
      size_t size = image.size();
      if (below(100) < 15) size = below(2) == 0 ? below(fields.header_end + 1) : below(size + 1);

      const auto start = std::chrono::steady_clock::now();
      try {
        auto parsed = gguf::GgufFile::Parse(image.data(), size, "fuzz");
        if (parsed.ok()) {
          CheckInside(**parsed, image.data(), size);
        } else {
          const absl::StatusCode code = parsed.status().code();
          ASSERT_TRUE(code == absl::StatusCode::kInvalidArgument ||
                      code == absl::StatusCode::kDataLoss)
              << parsed.status() << " seed " << g_seed << " iteration " << it;
        }
        outcomes[parsed.status().code()]++;
      } catch (const std::bad_alloc&) {
        FAIL() << "absurd allocation: seed " << g_seed << " iteration " << it;
      }
      slowest_ms = std::max(
          slowest_ms,
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count());
      if (HasFatalFailure()) FAIL() << "seed " << g_seed << " iteration " << it;
      for (auto u = undo.rbegin(); u != undo.rend(); ++u) image[u->first] = u->second;
      undo.clear();
    }
  }
  ASSERT_TRUE(std::equal(original_header.begin(), original_header.end(), image.begin()));
  for (const auto& [code, n] : outcomes)
    std::cout << absl::StatusCodeToString(code) << ": " << n << "\n";
  std::cout << "slowest parse " << slowest_ms << " ms\n";
  // The mutations must actually reach the checks, and some must survive them.
  EXPECT_GT(outcomes[absl::StatusCode::kInvalidArgument], static_cast<int>(iterations / 4));
  EXPECT_GT(outcomes[absl::StatusCode::kOk], 0);

  rusage usage{};
  ASSERT_EQ(::getrusage(RUSAGE_SELF, &usage), 0);
  const uint64_t peak_bytes = static_cast<uint64_t>(usage.ru_maxrss) * 1024;
  std::cout << "peak RSS " << (peak_bytes >> 20) << " MiB\n";
  EXPECT_LT(peak_bytes, (uint64_t{3} << 29) * (kSanitized ? 2 : 1));
}

// Every byte of a small file holding every metadata type, set to each of a few values, with the
// file also cut right after the changed byte. Each image is its own exact-size allocation, so
// AddressSanitizer sees any read past its end.
TEST(GgufFuzzTest, EveryByteOfASmallFileMutated) {
  gguf::GgufWriter w;
  w.SetUint8("u8", 1);
  w.SetInt8("i8", -1);
  w.SetUint16("u16", 2);
  w.SetInt16("i16", -2);
  w.SetUint32("u32", 3);
  w.SetInt32("i32", -3);
  w.SetUint64("u64", 4);
  w.SetInt64("i64", -4);
  w.SetFloat32("f32", 0.5f);
  w.SetFloat64("f64", 0.25);
  w.SetBool("bool", true);
  w.SetString("str", "text");
  w.SetArray("a.u8", std::vector<uint8_t>{1, 2});
  w.SetArray("a.i64", std::vector<int64_t>{-1, 1});
  w.SetArray("a.f32", std::vector<float>{1.0f});
  w.SetArray("a.f64", std::vector<double>{2.0});
  w.SetArray("a.bool", std::vector<bool>{true, false});
  w.SetArray("a.str", std::vector<std::string>{"ab", "", "c"});
  ASSERT_TRUE(w.set_alignment(64).ok());
  const Bytes f32(2 * 4 * 4, 0x11), q4k(144, 0x22), f16(3 * 2, 0x33);
  ASSERT_TRUE(w.AddTensor("f32", kernels::DType::kF32, {2, 4}, f32.data(), f32.size()).ok());
  ASSERT_TRUE(w.AddTensor("q4k", kernels::DType::kQ4_K, {1, 256}, q4k.data(), q4k.size()).ok());
  ASSERT_TRUE(w.AddTensor("f16", kernels::DType::kF16, {3}, f16.data(), f16.size()).ok());
  Bytes image = w.Serialize();
  ASSERT_TRUE(gguf::GgufFile::Parse(image.data(), image.size()).ok());

  std::map<absl::StatusCode, int> outcomes;
  for (size_t at = 0; at < image.size(); ++at) {
    const uint8_t original = image[at];
    for (uint8_t value : {uint8_t{0x00},
                          uint8_t{0x01},
                          uint8_t{0x7F},
                          uint8_t{0x80},
                          uint8_t{0xFF},
                          static_cast<uint8_t>(original ^ 0x01),
                          static_cast<uint8_t>(original + 1)}) {
      image[at] = value;
      for (size_t size : {image.size(), at + 1}) {
        const Bytes copy(image.begin(), image.begin() + size);
        auto parsed = gguf::GgufFile::Parse(copy.data(), copy.size());
        if (parsed.ok()) {
          CheckInside(**parsed, copy.data(), copy.size());
        } else {
          ASSERT_TRUE(parsed.status().code() == absl::StatusCode::kInvalidArgument ||
                      parsed.status().code() == absl::StatusCode::kDataLoss)
              << parsed.status();
        }
        ASSERT_FALSE(HasFatalFailure())
            << "byte " << at << " = " << int{value} << ", size " << size;
        outcomes[parsed.status().code()]++;
      }
    }
    image[at] = original;
  }
  for (const auto& [code, n] : outcomes) {
    std::cout << absl::StatusCodeToString(code) << ": " << n << "\n";
  }
  EXPECT_GT(outcomes[absl::StatusCode::kOk], 0);
  EXPECT_GT(outcomes[absl::StatusCode::kInvalidArgument], 0);
  EXPECT_GT(outcomes[absl::StatusCode::kDataLoss], 0);
}

}  // namespace
}  // namespace strata::gguf
