// CudaSpanBackend: against the CPU LayerSpan (tolerance), batch invariance within CUDA
// (bit-exact), and the node KV contract with device pages.
//
// CPU vs CUDA on hidden states after a span of tiny random layers, measured against exact
// arithmetic: the CPU span of the model's F32 twin (the same weights, dequantized; no activation
// quantization). Both backends quantize activations to 8 bits for the quantized formats, and an
// activation code that rounds the other way (float summation order, libm) is amplified through
// the layers, so their distance from each other is not a fixed number per format. What holds for
// every format: the CUDA result is no further from exact than the CPU's own error allows,
// relative L2 <= max(2e-3, 1.5 x the CPU's), and max |difference| within 1e-2 of max |exact|
// plus the CPU's own max difference.
#include "model/cuda/span.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <random>

#include "kernels/dtype.h"
#include "model/llama.h"
#include "tests/cuda/gpu_testing.h"
#include "tests/cuda/span_testing.h"
#include "tests/testing/model_runner.h"
#include "tests/testing/paths.h"
#include "tests/testing/tiny_model.h"
#include "text/tokenizer.h"

namespace strata {
namespace {

using kernels::DType;
using model::KvCache;
using model::LayerSpan;
using model::Row;
using model::SeqBit;

constexpr size_t kKvBytes = size_t{512} << 20;

using testkit::BitEqual;
using testkit::Distance;
using testkit::Measure;
using testkit::RandomTokens;
using testkit::Rows;
using testkit::TinyModel;

// The tolerance stated at the top: CUDA against exact, bounded by the CPU's own error.
void ExpectClose(const std::vector<float>& gpu,
                 const std::vector<float>& cpu,
                 const std::vector<float>& exact,
                 const char* what) {
  ASSERT_EQ(gpu.size(), exact.size());
  ASSERT_EQ(cpu.size(), exact.size());
  const Distance g = Measure(gpu, exact), c = Measure(cpu, exact);
  EXPECT_LE(g.rel_l2, std::max(2e-3, 1.5 * c.rel_l2))
      << what << ": relative L2 error from exact (the CPU's: " << c.rel_l2 << ")";
  EXPECT_LE(g.max_diff, 1e-2 * g.max_ref + c.max_diff)
      << what << ": max difference from exact (max |exact| " << g.max_ref << ", the CPU's "
      << c.max_diff << ")";
}

// One model with both backends and their KV pools.
struct Pair {
  std::string path;
  std::unique_ptr<testkit::ModelRunner> runner;  // embeddings, CPU head, thread pool
  std::unique_ptr<LayerSpan> cpu;
  std::unique_ptr<model::CudaSpanBackend> gpu;
  std::unique_ptr<model::KvPool> cpu_pool, gpu_pool;
  model::ForwardScratch scratch;

  void Init(const std::string& p, int first, int last, bool fuse = true) {
    path = p;
    runner = std::make_unique<testkit::ModelRunner>(p, 2);
    auto c = LayerSpan::Load(runner->shared_model(), first, last);
    ASSERT_TRUE(c.ok()) << c.status();
    cpu = std::move(*c);
    model::CudaSpanOptions o;
    o.fuse_projections = fuse;
    auto g = model::CudaSpanBackend::Load(runner->shared_model(), first, last, o);
    ASSERT_TRUE(g.ok()) << g.status();
    gpu = std::move(*g);
    cpu_pool = model::NewCpuKvPool(kKvBytes);
    gpu_pool = model::NewCudaKvPool(0, kKvBytes);
  }
  std::unique_ptr<KvCache> CpuCache() {
    return std::make_unique<KvCache>(cpu_pool.get(), cpu->kv_layout());
  }
  std::unique_ptr<KvCache> GpuCache() { return gpu->NewKvCache(gpu_pool.get()); }

  std::vector<float> CpuForward(KvCache& kv, std::span<const Row> rows, std::vector<float> h) {
    const LayerSpan::Part part{&kv, rows};
    absl::Status st = cpu->ForwardBatch({&part, 1}, h.data(), runner->pool(), scratch);
    EXPECT_TRUE(st.ok()) << st;
    return h;
  }
  std::vector<float> GpuForward(KvCache& kv, std::span<const Row> rows, std::vector<float> h) {
    const LayerSpan::Part part{&kv, rows};
    absl::Status st = gpu->ForwardBatch({&part, 1}, h.data());
    EXPECT_TRUE(st.ok()) << st;
    return h;
  }
  std::vector<float> Embed(std::span<const int32_t> t) const { return runner->Embed(t); }
  int n_embd() const { return runner->model().hparams().n_embd; }
};

testkit::TinyModelSpec Spec(DType w, int width = 64, const char* arch = "llama") {
  testkit::TinyModelSpec s;
  s.arch = arch;
  s.weight_type = w;
  s.n_embd = width;
  s.n_ff = 2 * width;
  s.n_layer = 5;
  return s;
}

// ---------------------------------------------------------------------------------------------
// CPU vs CUDA on tiny random models of every weight type.

struct TinyCase {
  const char* name;
  testkit::TinyModelSpec spec;
};

void PrintTo(const TinyCase& c, std::ostream* os) { *os << c.name; }

class CudaVsCpu : public ::testing::TestWithParam<TinyCase> {};

TEST_P(CudaVsCpu, PrefillThenDecodeAgreeWithinTolerance) {
  STRATA_SKIP_WITHOUT_GPU();
  Pair p, twin;
  p.Init(TinyModel(GetParam().spec), 0, GetParam().spec.n_layer);
  if (HasFatalFailure()) return;
  testkit::TinyModelSpec exact_spec = GetParam().spec;
  exact_spec.dequantized_f32 = true;
  twin.Init(TinyModel(exact_spec), 0, exact_spec.n_layer);
  if (HasFatalFailure()) return;
  auto cc = p.CpuCache(), gc = p.GpuCache(), xc = twin.CpuCache();
  const std::vector<int32_t> tokens = RandomTokens(13, testkit::kTinyVocab, 3);
  const std::vector<Row> prefill = Rows(0, 9);
  const std::vector<float> h = p.Embed(std::span(tokens).first(9));
  ExpectClose(p.GpuForward(*gc, prefill, h),
              p.CpuForward(*cc, prefill, h),
              twin.CpuForward(*xc, prefill, h),
              "prefill");
  for (int i = 9; i < 13; ++i) {
    const std::vector<Row> row = Rows(i, 1);
    const std::vector<float> hi = p.Embed(std::span(tokens).subspan(i, 1));
    ExpectClose(p.GpuForward(*gc, row, hi),
                p.CpuForward(*cc, row, hi),
                twin.CpuForward(*xc, row, hi),
                "decode");
  }
  EXPECT_EQ(gc->used_cells(), 13);
}

INSTANTIATE_TEST_SUITE_P(Tiny,
                         CudaVsCpu,
                         ::testing::Values(TinyCase{"q4_0", Spec(DType::kQ4_0)},
                                           TinyCase{"q4_1", Spec(DType::kQ4_1)},
                                           TinyCase{"q8_0", Spec(DType::kQ8_0)},
                                           TinyCase{"f16", Spec(DType::kF16)},
                                           TinyCase{"bf16", Spec(DType::kBF16)},
                                           TinyCase{"f32", Spec(DType::kF32)},
                                           TinyCase{"q4_K", Spec(DType::kQ4_K, 256)},
                                           TinyCase{"q6_K", Spec(DType::kQ6_K, 256)},
                                           TinyCase{"qwen2_q8_0", Spec(DType::kQ8_0, 64, "qwen2")}),
                         [](const auto& info) { return std::string(info.param.name); });

// The default model end to end: CUDA span of all 30 layers + CPU head gives the same greedy
// tokens as the CPU.
TEST(CudaDefaultModel, GreedyTokensMatchCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  if (!testkit::DefaultModelPresent()) {
    GTEST_SKIP() << "default model not present at " << testkit::DefaultModelPath()
                 << " (set STRATA_MODEL)";
  }
  Pair p;
  auto model = model::Model::Open(testkit::DefaultModelPath());
  ASSERT_TRUE(model.ok()) << model.status();
  p.Init(testkit::DefaultModelPath(), 0, (*model)->hparams().n_layer);
  if (HasFatalFailure()) return;
  auto tok = text::Tokenizer::FromGguf((*model)->gguf());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<int32_t> prompt =
      (*tok)->Encode("The capital of France is Paris. The capital of Italy is", false, false);
  ASSERT_FALSE(prompt.empty());
  const int64_t e = p.n_embd();
  auto greedy = [&](bool gpu, std::vector<float>* last_logits) {
    auto kv = gpu ? p.GpuCache() : p.CpuCache();
    std::vector<int32_t> out;
    std::vector<int32_t> next = prompt;
    int32_t pos = 0;
    for (int step = 0; step < 8; ++step) {
      const std::vector<Row> rows = Rows(pos, static_cast<int>(next.size()));
      std::vector<float> h = p.Embed(next);
      h = gpu ? p.GpuForward(*kv, rows, h) : p.CpuForward(*kv, rows, h);
      const std::vector<float> last(h.end() - e, h.end());
      const std::vector<float> logits = p.runner->Logits(last);
      if (step == 0 && last_logits) *last_logits = logits;
      const int32_t t =
          static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      out.push_back(t);
      pos += static_cast<int32_t>(next.size());
      next = {t};
    }
    return out;
  };
  std::vector<float> cpu_logits, gpu_logits;
  const std::vector<int32_t> cpu = greedy(false, &cpu_logits);
  const std::vector<int32_t> gpu = greedy(true, &gpu_logits);
  double max_diff = 0;
  for (size_t i = 0; i < cpu_logits.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(cpu_logits[i]) - gpu_logits[i]));
  }
  RecordProperty("max_logit_diff", std::to_string(max_diff));
  std::cout << "default model: max |logit difference| after the prompt " << max_diff << "\n";
  EXPECT_EQ(gpu, cpu);
}

// ---------------------------------------------------------------------------------------------
// Batch invariance within CUDA: bit-exact.

class CudaBatchInvariance : public ::testing::TestWithParam<DType> {};

TEST_P(CudaBatchInvariance, RowAloneEqualsRowInBatchesAndSessions) {
  STRATA_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int width = (t == DType::kQ4_K || t == DType::kQ6_K) ? 256 : 64;
  Pair p;
  p.Init(TinyModel(Spec(t, width)), 0, 5);
  if (HasFatalFailure()) return;
  const int64_t e = p.n_embd();
  const std::vector<int32_t> a = RandomTokens(6, testkit::kTinyVocab, 1);
  const std::vector<int32_t> b = RandomTokens(7, testkit::kTinyVocab, 2);
  const std::vector<int32_t> c = RandomTokens(5, testkit::kTinyVocab, 3);

  // Reference: session A alone, prefill of 5 then one decode row.
  auto ref_kv = p.GpuCache();
  const std::vector<float> ref_prefill =
      p.GpuForward(*ref_kv, Rows(0, 5), p.Embed(std::span(a).first(5)));
  const std::vector<float> ref_row =
      p.GpuForward(*ref_kv, Rows(5, 1), p.Embed(std::span(a).subspan(5, 1)));

  // The same rows inside multi-session batches: A's prefill with B's and C's; then A's decode row
  // in a batch of 7 (B 3 rows, A 1 row, C 3 rows).
  auto ka = p.GpuCache(), kb = p.GpuCache(), kc = p.GpuCache();
  {
    const std::vector<Row> ra = Rows(0, 5), rb = Rows(0, 4), rc = Rows(0, 2);
    std::vector<float> h = p.Embed(std::span(b).first(4));
    const std::vector<float> ha = p.Embed(std::span(a).first(5)),
                             hc = p.Embed(std::span(c).first(2));
    h.insert(h.begin(), ha.begin(), ha.end());
    h.insert(h.end(), hc.begin(), hc.end());
    const LayerSpan::Part parts[] = {{ka.get(), ra}, {kb.get(), rb}, {kc.get(), rc}};
    ASSERT_TRUE(p.gpu->ForwardBatch(parts, h.data()).ok());
    EXPECT_TRUE(BitEqual(h.data(), ref_prefill.data(), 5 * e)) << "prefill inside a batch";
  }
  {
    const std::vector<Row> rb = Rows(4, 3), ra = Rows(5, 1), rc = Rows(2, 3);
    std::vector<float> h = p.Embed(std::span(b).subspan(4, 3));
    const std::vector<float> ha = p.Embed(std::span(a).subspan(5, 1));
    const std::vector<float> hc = p.Embed(std::span(c).subspan(2, 3));
    h.insert(h.end(), ha.begin(), ha.end());
    h.insert(h.end(), hc.begin(), hc.end());
    const LayerSpan::Part parts[] = {{kb.get(), rb}, {ka.get(), ra}, {kc.get(), rc}};
    ASSERT_TRUE(p.gpu->ForwardBatch(parts, h.data()).ok());
    EXPECT_TRUE(BitEqual(h.data() + 3 * e, ref_row.data(), e)) << "decode row in a batch of 7";
  }

  // Another session whose cells sit in other slots (a truncated draft left holes).
  auto kd = p.GpuCache();
  p.GpuForward(*kd, Rows(0, 8, SeqBit(1)), p.Embed(RandomTokens(8, testkit::kTinyVocab, 9)));
  const std::vector<float> d_prefill =
      p.GpuForward(*kd, Rows(0, 5), p.Embed(std::span(a).first(5)));
  kd->Truncate(1, 0);
  EXPECT_TRUE(BitEqual(d_prefill.data(), ref_prefill.data(), 5 * e)) << "prefill beside a draft";
  const std::vector<float> d_row =
      p.GpuForward(*kd, Rows(5, 1), p.Embed(std::span(a).subspan(5, 1)));
  EXPECT_TRUE(BitEqual(d_row.data(), ref_row.data(), e)) << "decode row in reused slots";

  // Token by token equals the prefill, row for row.
  auto ke = p.GpuCache();
  for (int i = 0; i < 5; ++i) {
    const std::vector<float> r = p.GpuForward(*ke, Rows(i, 1), p.Embed(std::span(a).subspan(i, 1)));
    EXPECT_TRUE(BitEqual(r.data(), ref_prefill.data() + i * e, e)) << "token " << i;
  }

  // Unfused projections: the same bits.
  Pair q;
  q.Init(p.path, 0, 5, /*fuse=*/false);
  if (HasFatalFailure()) return;
  auto kf = q.GpuCache();
  EXPECT_TRUE(BitEqual(q.GpuForward(*kf, Rows(0, 5), q.Embed(std::span(a).first(5))).data(),
                       ref_prefill.data(),
                       5 * e))
      << "unfused prefill";
}

INSTANTIATE_TEST_SUITE_P(Dtypes,
                         CudaBatchInvariance,
                         ::testing::Values(DType::kQ4_0, DType::kQ4_1, DType::kQ6_K, DType::kF16),
                         [](const auto& info) {
                           return std::string(kernels::Info(info.param).name);
                         });

// ---------------------------------------------------------------------------------------------
// KV contract with device pages.

class CudaKv : public ::testing::Test {
 protected:
  void SetUp() override {
    STRATA_SKIP_WITHOUT_GPU();
    p_.Init(TinyModel(Spec(DType::kQ8_0)), 1, 4);  // a middle span
    e_ = p_.n_embd();
    tokens_ = RandomTokens(10, testkit::kTinyVocab, 7);
  }
  std::vector<float> H(int first, int n) { return p_.Embed(std::span(tokens_).subspan(first, n)); }
  Pair p_;
  int64_t e_ = 0;
  std::vector<int32_t> tokens_;
};

TEST_F(CudaKv, ForkSharesThePrefix) {
  auto plain = p_.GpuCache();
  p_.GpuForward(*plain, Rows(0, 6), H(0, 6));
  const std::vector<float> want = p_.GpuForward(*plain, Rows(6, 1), H(6, 1));

  auto kv = p_.GpuCache();
  p_.GpuForward(*kv, Rows(0, 6), H(0, 6));
  kv->Fork(0, 1);
  const std::vector<float> got = p_.GpuForward(*kv, Rows(6, 1, SeqBit(1)), H(6, 1));
  EXPECT_TRUE(BitEqual(got.data(), want.data(), e_));
  EXPECT_EQ(kv->SeqLength(1), 7);
  EXPECT_EQ(kv->SeqLength(0), 6);
  // A draft-tree row that attends to the committed text sees the same cells.
  std::vector<Row> tree = {{6, SeqBit(2), SeqBit(0)}};
  const std::vector<float> via_attend = p_.GpuForward(*kv, tree, H(6, 1));
  EXPECT_TRUE(BitEqual(via_attend.data(), want.data(), e_));
}

TEST_F(CudaKv, TruncateThenRewriteEqualsFreshPrefill) {
  std::vector<int32_t> other = RandomTokens(3, testkit::kTinyVocab, 99);
  auto kv = p_.GpuCache();
  p_.GpuForward(*kv, Rows(0, 8), H(0, 8));
  kv->Truncate(0, 5);
  EXPECT_EQ(kv->SeqLength(0), 5);
  const std::vector<float> got = p_.GpuForward(*kv, Rows(5, 3), p_.Embed(other));

  std::vector<int32_t> fresh_tokens(tokens_.begin(), tokens_.begin() + 5);
  fresh_tokens.insert(fresh_tokens.end(), other.begin(), other.end());
  auto fresh = p_.GpuCache();
  const std::vector<float> want = p_.GpuForward(*fresh, Rows(0, 8), p_.Embed(fresh_tokens));
  EXPECT_TRUE(BitEqual(got.data(), want.data() + 5 * e_, 3 * e_));
}

TEST_F(CudaKv, CancelKeepsNoCells) {
  auto kv = p_.GpuCache();
  p_.GpuForward(*kv, Rows(0, 4), H(0, 4));
  const size_t used = p_.gpu_pool->used_bytes();
  std::atomic<bool> cancel{true};
  std::vector<float> h = H(4, 2);
  const std::vector<Row> rows = Rows(4, 2);
  const LayerSpan::Part part{kv.get(), rows};
  EXPECT_EQ(p_.gpu->ForwardBatch({&part, 1}, h.data(), &cancel).code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(kv->used_cells(), 4);
  EXPECT_EQ(p_.gpu_pool->used_bytes(), used);

  // One part given up inside a batch: the other part's rows are unaffected.
  auto other = p_.GpuCache();
  const std::vector<float> alone = p_.GpuForward(*other, Rows(0, 3), H(0, 3));
  auto k1 = p_.GpuCache(), k2 = p_.GpuCache();
  std::atomic<bool> give_up{true};
  bool cancelled = false;
  std::vector<float> both = H(0, 3);
  const std::vector<float> h1 = H(5, 2);
  both.insert(both.end(), h1.begin(), h1.end());
  const std::vector<Row> r3 = Rows(0, 3), r2 = Rows(0, 2);
  LayerSpan::Part parts[2] = {{k2.get(), r3}, {k1.get(), r2}};
  parts[1].cancel = &give_up;
  parts[1].cancelled = &cancelled;
  ASSERT_TRUE(p_.gpu->ForwardBatch(parts, both.data()).ok());
  EXPECT_TRUE(cancelled);
  EXPECT_EQ(k1->used_cells(), 0);
  EXPECT_EQ(k2->used_cells(), 3);
  EXPECT_TRUE(BitEqual(both.data(), alone.data(), 3 * e_));
}

TEST_F(CudaKv, RejectsHostPagesAndFullPools) {
  auto host_kv = std::make_unique<KvCache>(p_.cpu_pool.get(), p_.gpu->kv_layout());
  std::vector<float> h = H(0, 2);
  const std::vector<Row> rows = Rows(0, 2);
  const LayerSpan::Part part{host_kv.get(), rows};
  EXPECT_EQ(p_.gpu->ForwardBatch({&part, 1}, h.data()).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(host_kv->used_cells(), 0);

  auto small_pool = model::NewCudaKvPool(0, model::KvPageBytes(p_.gpu->kv_layout(), 32));
  auto kv = p_.gpu->NewKvCache(small_pool.get());
  std::vector<float> big(40 * e_, 0.5f);
  const std::vector<Row> many = Rows(0, 40);
  const LayerSpan::Part full{kv.get(), many};
  EXPECT_EQ(p_.gpu->ForwardBatch({&full, 1}, big.data()).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(kv->used_cells(), 0);
  p_.GpuForward(*kv, Rows(0, 32), std::vector<float>(32 * e_, 0.25f));
  EXPECT_EQ(small_pool->used_bytes(), small_pool->capacity_bytes());
  kv.reset();
  EXPECT_EQ(small_pool->used_bytes(), 0u);
}

TEST(CudaSpanLoad, ReportsBadSpansAndDevices) {
  const std::string path = TinyModel(Spec(DType::kQ4_0));
  auto model = model::Model::Open(path);
  ASSERT_TRUE(model.ok());
  auto gpus = kernels::cuda::DeviceCount();
  model::CudaSpanOptions o;
  o.device = 0;
  auto bad = model::CudaSpanBackend::Load(*model, 3, 2, o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  o.device = 999;
  auto missing = model::CudaSpanBackend::Load(*model, 0, 1, o);
  EXPECT_FALSE(missing.ok());
  if (!gpus.ok()) {
    EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnavailable) << missing.status();
  } else {
    EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument) << missing.status();
  }
}

}  // namespace
}  // namespace strata
