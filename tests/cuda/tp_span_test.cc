// CudaTpSpanBackend: a span split across devices. On one GPU the shards share device 0 (the copy
// reducer), which runs the same code and the same sum as on several GPUs.
//
// - Against the single-device CUDA span: with float weights the only difference is the order in
//   which the shards' partial products are added, so results agree tightly; with quantized
//   weights an activation code may round the other way, so both are held to span_test's
//   tolerance against exact arithmetic (the CPU span of the model's dequantized F32 twin).
// - One shard is bit-identical to the single-device span, with either reducer.
// - Batch invariance (bit-exact) and the KV contract hold as for the single-device span.
// - Shapes that cannot be split give INVALID_ARGUMENT.
#include "model/cuda/tp_span.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <random>

#include "kernels/cuda/nccl_link.h"
#include "kernels/dtype.h"
#include "model/cuda/span.h"
#include "model/llama.h"
#include "tests/cuda/gpu_testing.h"
#include "tests/cuda/span_testing.h"
#include "tests/testing/model_runner.h"
#include "tests/testing/tiny_model.h"

namespace strata {
namespace {

using kernels::DType;
using model::CudaTpSpanOptions;
using model::KvCache;
using model::LayerSpan;
using model::Row;
using model::SeqBit;
using model::TpReducer;

constexpr size_t kKvBytes = size_t{256} << 20;

using testkit::BitEqual;
using testkit::Distance;
using testkit::Measure;
using testkit::RandomTokens;
using testkit::Rows;
using testkit::TinyModel;

// Four KV heads, so two or four shards can split them; K-quants need 256-column slices, hence
// the wider model.
testkit::TinyModelSpec Spec(DType w, const char* arch = "llama") {
  const bool k_quant = w == DType::kQ4_K || w == DType::kQ6_K;
  testkit::TinyModelSpec s;
  s.arch = arch;
  s.weight_type = w;
  s.n_embd = k_quant ? 512 : 128;
  s.n_ff = 2 * s.n_embd;
  s.n_head = 8;
  s.n_head_kv = 4;
  s.n_layer = 5;
  return s;
}

// A model with the single-device span and a tensor-parallel one, each with its KV pool.
struct Spans {
  std::string path;
  std::unique_ptr<testkit::ModelRunner> runner;
  std::unique_ptr<model::CudaSpanBackend> single;
  std::unique_ptr<model::CudaTpSpanBackend> tp;
  std::unique_ptr<model::KvPool> single_pool, tp_pool;

  void Init(const std::string& p,
            std::vector<int> devices,
            TpReducer reducer = TpReducer::kCopy,
            bool fuse = true) {
    path = p;
    runner = std::make_unique<testkit::ModelRunner>(p, 2);
    const int n_layer = runner->n_layer();
    auto s = model::CudaSpanBackend::Load(runner->shared_model(), 0, n_layer);
    ASSERT_TRUE(s.ok()) << s.status();
    single = std::move(*s);
    CudaTpSpanOptions o;
    o.devices = devices;
    o.reducer = reducer;
    o.fuse_projections = fuse;
    auto t = model::CudaTpSpanBackend::Load(runner->shared_model(), 0, n_layer, o);
    ASSERT_TRUE(t.ok()) << t.status();
    tp = std::move(*t);
    single_pool = model::NewCudaKvPool(0, kKvBytes);
    tp_pool = model::NewCudaTpKvPool(devices, kKvBytes);
  }
  std::unique_ptr<KvCache> SingleCache() { return single->NewKvCache(single_pool.get()); }
  std::unique_ptr<KvCache> TpCache() { return tp->NewKvCache(tp_pool.get()); }

  static std::vector<float> Run(model::SpanBackend& b,
                                KvCache& kv,
                                std::span<const Row> rows,
                                std::vector<float> h) {
    const LayerSpan::Part part{&kv, rows};
    absl::Status st = b.ForwardBatch({&part, 1}, h.data());
    EXPECT_TRUE(st.ok()) << st;
    return h;
  }
  std::vector<float> Single(KvCache& kv, std::span<const Row> rows, std::vector<float> h) {
    return Run(*single, kv, rows, std::move(h));
  }
  std::vector<float> Tp(KvCache& kv, std::span<const Row> rows, std::vector<float> h) {
    return Run(*tp, kv, rows, std::move(h));
  }
  std::vector<float> Embed(std::span<const int32_t> t) const { return runner->Embed(t); }
  int64_t n_embd() const { return runner->model().hparams().n_embd; }
};

// The exact reference: the CPU span of the dequantized F32 twin.
struct Exact {
  std::unique_ptr<testkit::ModelRunner> runner;
  std::unique_ptr<LayerSpan> span;
  std::unique_ptr<model::KvPool> pool;
  model::ForwardScratch scratch;

  void Init(testkit::TinyModelSpec spec) {
    spec.dequantized_f32 = true;
    runner = std::make_unique<testkit::ModelRunner>(TinyModel(spec), 2);
    auto s = LayerSpan::Load(runner->shared_model(), 0, spec.n_layer);
    ASSERT_TRUE(s.ok()) << s.status();
    span = std::move(*s);
    pool = model::NewCpuKvPool(kKvBytes);
  }
  std::unique_ptr<KvCache> Cache() {
    return std::make_unique<KvCache>(pool.get(), span->kv_layout());
  }
  std::vector<float> Run(KvCache& kv, std::span<const Row> rows, std::vector<float> h) {
    const LayerSpan::Part part{&kv, rows};
    absl::Status st = span->ForwardBatch({&part, 1}, h.data(), runner->pool(), scratch);
    EXPECT_TRUE(st.ok()) << st;
    return h;
  }
};

bool IsFloat(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

// Float weights: only the order of the partial sums differs. Quantized: span_test's bound
// against exact arithmetic, with the single-device span's own error as the yardstick.
void ExpectClose(DType t,
                 const std::vector<float>& tp,
                 const std::vector<float>& single,
                 const std::vector<float>& exact,
                 const char* what) {
  ASSERT_EQ(tp.size(), single.size());
  if (IsFloat(t)) {
    // Float weights: the two spans differ only in where f32 partial sums are rounded (wo and
    // ffn_down summed per shard, then across shards), carried through four random layers. An
    // H200 measured 1.1e-5 to 6e-5 (f16 the most); a wrong slice or a lost partial is O(1).
    const Distance d = Measure(tp, single);
    EXPECT_LE(d.rel_l2, 2e-4) << what << ": relative L2 distance from the single-device span";
    EXPECT_LE(d.max_diff, 2e-3 * d.max_ref)
        << what << ": max difference (max |ref| " << d.max_ref << ")";
    return;
  }
  ASSERT_EQ(exact.size(), single.size());
  const Distance g = Measure(tp, exact), s = Measure(single, exact);
  EXPECT_LE(g.rel_l2, std::max(2e-3, 1.5 * s.rel_l2))
      << what << ": relative L2 error from exact (the single-device span's: " << s.rel_l2 << ")";
  EXPECT_LE(g.max_diff, 1e-2 * g.max_ref + s.max_diff)
      << what << ": max difference from exact (max |exact| " << g.max_ref
      << ", the single-device span's " << s.max_diff << ")";
}

// ---------------------------------------------------------------------------------------------
// Two shards on device 0 against the single-device span.

struct TpCase {
  const char* name;
  testkit::TinyModelSpec spec;
};
void PrintTo(const TpCase& c, std::ostream* os) { *os << c.name; }

class TpVsSingle : public ::testing::TestWithParam<TpCase> {};

TEST_P(TpVsSingle, PrefillThenDecodeAgree) {
  STRATA_SKIP_WITHOUT_GPU();
  const testkit::TinyModelSpec& spec = GetParam().spec;
  Spans p;
  p.Init(TinyModel(spec), {0, 0});
  if (HasFatalFailure()) return;
  EXPECT_FALSE(p.tp->uses_nccl());
  EXPECT_EQ(p.tp->devices(), (std::vector<int>{0, 0}));
  EXPECT_NE(p.tp->reducer_description().find("device copies"), std::string::npos);
  Exact x;
  if (!IsFloat(spec.weight_type)) {
    x.Init(spec);
    if (HasFatalFailure()) return;
  }
  auto tc = p.TpCache(), sc = p.SingleCache();
  auto xc = x.span ? x.Cache() : nullptr;
  auto exact = [&](std::span<const Row> rows, const std::vector<float>& h) {
    return xc ? x.Run(*xc, rows, h) : std::vector<float>();
  };
  const std::vector<int32_t> tokens = RandomTokens(13, testkit::kTinyVocab, 3);
  const std::vector<Row> prefill = Rows(0, 9);
  const std::vector<float> h = p.Embed(std::span(tokens).first(9));
  ExpectClose(spec.weight_type,
              p.Tp(*tc, prefill, h),
              p.Single(*sc, prefill, h),
              exact(prefill, h),
              "prefill");
  for (int i = 9; i < 13; ++i) {
    const std::vector<Row> row = Rows(i, 1);
    const std::vector<float> hi = p.Embed(std::span(tokens).subspan(i, 1));
    ExpectClose(
        spec.weight_type, p.Tp(*tc, row, hi), p.Single(*sc, row, hi), exact(row, hi), "decode");
  }
  EXPECT_EQ(tc->used_cells(), 13);
}

INSTANTIATE_TEST_SUITE_P(Tiny,
                         TpVsSingle,
                         ::testing::Values(TpCase{"f32", Spec(DType::kF32)},
                                           TpCase{"f16", Spec(DType::kF16)},
                                           TpCase{"bf16", Spec(DType::kBF16)},
                                           TpCase{"q4_0", Spec(DType::kQ4_0)},
                                           TpCase{"q4_1", Spec(DType::kQ4_1)},
                                           TpCase{"q8_0", Spec(DType::kQ8_0)},
                                           TpCase{"q4_K", Spec(DType::kQ4_K)},
                                           TpCase{"q6_K", Spec(DType::kQ6_K)},
                                           TpCase{"qwen2_q8_0", Spec(DType::kQ8_0, "qwen2")},
                                           TpCase{"qwen2_f32", Spec(DType::kF32, "qwen2")}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------------------------
// One shard: bit-identical to the single-device span, through either reducer.

void ExpectOneShardBitIdentical(TpReducer reducer) {
  Spans p;
  p.Init(TinyModel(Spec(DType::kQ4_1)), {0}, reducer);
  if (::testing::Test::HasFatalFailure()) return;
  const int64_t e = p.n_embd();
  const std::vector<int32_t> tokens = RandomTokens(8, testkit::kTinyVocab, 5);
  auto tc = p.TpCache(), sc = p.SingleCache();
  const std::vector<float> h = p.Embed(std::span(tokens).first(6));
  EXPECT_TRUE(BitEqual(p.Tp(*tc, Rows(0, 6), h).data(), p.Single(*sc, Rows(0, 6), h).data(), 6 * e))
      << "prefill";
  for (int i = 6; i < 8; ++i) {
    const std::vector<float> hi = p.Embed(std::span(tokens).subspan(i, 1));
    EXPECT_TRUE(BitEqual(p.Tp(*tc, Rows(i, 1), hi).data(), p.Single(*sc, Rows(i, 1), hi).data(), e))
        << "decode " << i;
  }
}

TEST(TpOneShard, CopyReducerIsBitIdenticalToTheSingleDeviceSpan) {
  STRATA_SKIP_WITHOUT_GPU();
  ExpectOneShardBitIdentical(TpReducer::kCopy);
}

TEST(TpOneShard, NcclReducerIsBitIdenticalToTheSingleDeviceSpan) {
  STRATA_SKIP_WITHOUT_GPU();
  if (auto v = kernels::cuda::NcclVersion(); !v.ok()) GTEST_SKIP() << v.status().message();
  auto probe = kernels::cuda::TensorParallelGroup::Create({0});
  if (!probe.ok()) GTEST_SKIP() << "NCCL does not start here: " << probe.status();
  probe->reset();
  ExpectOneShardBitIdentical(TpReducer::kNccl);
}

// Several GPUs: NCCL and the copy reducer give the same bits, which are also those of the shards
// sharing device 0 (the same sum in the same order).
TEST(TpSeveralGpus, NcclEqualsCopiesEqualsSharedDevice) {
  STRATA_SKIP_WITHOUT_GPU();
  auto count = kernels::cuda::DeviceCount();
  if (!count.ok() || *count < 2) GTEST_SKIP() << "needs two GPUs";
  if (auto v = kernels::cuda::NcclVersion(); !v.ok()) GTEST_SKIP() << v.status().message();
  const std::string path = TinyModel(Spec(DType::kQ8_0));
  const std::vector<int32_t> tokens = RandomTokens(7, testkit::kTinyVocab, 11);
  std::vector<std::vector<float>> outs;
  for (auto [devices, reducer] : {std::pair{std::vector<int>{0, 1}, TpReducer::kNccl},
                                  std::pair{std::vector<int>{0, 1}, TpReducer::kCopy},
                                  std::pair{std::vector<int>{0, 0}, TpReducer::kCopy}}) {
    Spans p;
    p.Init(path, devices, reducer);
    if (HasFatalFailure()) return;
    auto kv = p.TpCache();
    std::vector<float> out = p.Tp(*kv, Rows(0, 6), p.Embed(std::span(tokens).first(6)));
    const std::vector<float> last = p.Tp(*kv, Rows(6, 1), p.Embed(std::span(tokens).subspan(6, 1)));
    out.insert(out.end(), last.begin(), last.end());
    outs.push_back(std::move(out));
  }
  EXPECT_TRUE(BitEqual(outs[0].data(), outs[1].data(), outs[0].size())) << "NCCL vs copies";
  EXPECT_TRUE(BitEqual(outs[1].data(), outs[2].data(), outs[1].size())) << "two GPUs vs one";
}

// ---------------------------------------------------------------------------------------------
// Batch invariance: a row's bits do not depend on the batch.

class TpBatchInvariance : public ::testing::TestWithParam<DType> {};

TEST_P(TpBatchInvariance, RowAloneEqualsRowInBatchesAndSessions) {
  STRATA_SKIP_WITHOUT_GPU();
  Spans p;
  p.Init(TinyModel(Spec(GetParam())), {0, 0});
  if (HasFatalFailure()) return;
  const int64_t e = p.n_embd();
  const std::vector<int32_t> a = RandomTokens(6, testkit::kTinyVocab, 1);
  const std::vector<int32_t> b = RandomTokens(7, testkit::kTinyVocab, 2);
  const std::vector<int32_t> c = RandomTokens(5, testkit::kTinyVocab, 3);

  auto ref_kv = p.TpCache();
  const std::vector<float> ref_prefill = p.Tp(*ref_kv, Rows(0, 5), p.Embed(std::span(a).first(5)));
  const std::vector<float> ref_row = p.Tp(*ref_kv, Rows(5, 1), p.Embed(std::span(a).subspan(5, 1)));

  auto ka = p.TpCache(), kb = p.TpCache(), kc = p.TpCache();
  {
    const std::vector<Row> ra = Rows(0, 5), rb = Rows(0, 4), rc = Rows(0, 2);
    std::vector<float> h = p.Embed(std::span(b).first(4));
    const std::vector<float> ha = p.Embed(std::span(a).first(5)),
                             hc = p.Embed(std::span(c).first(2));
    h.insert(h.begin(), ha.begin(), ha.end());
    h.insert(h.end(), hc.begin(), hc.end());
    const LayerSpan::Part parts[] = {{ka.get(), ra}, {kb.get(), rb}, {kc.get(), rc}};
    ASSERT_TRUE(p.tp->ForwardBatch(parts, h.data()).ok());
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
    ASSERT_TRUE(p.tp->ForwardBatch(parts, h.data()).ok());
    EXPECT_TRUE(BitEqual(h.data() + 3 * e, ref_row.data(), e)) << "decode row in a batch of 7";
  }

  // Token by token equals the prefill, row for row.
  auto kt = p.TpCache();
  for (int i = 0; i < 5; ++i) {
    const std::vector<float> r = p.Tp(*kt, Rows(i, 1), p.Embed(std::span(a).subspan(i, 1)));
    EXPECT_TRUE(BitEqual(r.data(), ref_prefill.data() + i * e, e)) << "token " << i;
  }

  // Unfused projections: the same bits.
  Spans q;
  q.Init(p.path, {0, 0}, TpReducer::kCopy, /*fuse=*/false);
  if (HasFatalFailure()) return;
  auto kf = q.TpCache();
  EXPECT_TRUE(BitEqual(
      q.Tp(*kf, Rows(0, 5), q.Embed(std::span(a).first(5))).data(), ref_prefill.data(), 5 * e))
      << "unfused prefill";
}

INSTANTIATE_TEST_SUITE_P(Dtypes,
                         TpBatchInvariance,
                         ::testing::Values(DType::kQ4_0, DType::kQ6_K, DType::kF16),
                         [](const auto& info) {
                           return std::string(kernels::Info(info.param).name);
                         });

// ---------------------------------------------------------------------------------------------
// KV contract: per-shard pages behind one handle.

class TpKv : public ::testing::Test {
 protected:
  void SetUp() override {
    STRATA_SKIP_WITHOUT_GPU();
    p_.Init(TinyModel(Spec(DType::kQ8_0)), {0, 0});
    e_ = p_.n_embd();
    tokens_ = RandomTokens(10, testkit::kTinyVocab, 7);
  }
  std::vector<float> H(int first, int n) { return p_.Embed(std::span(tokens_).subspan(first, n)); }
  Spans p_;
  int64_t e_ = 0;
  std::vector<int32_t> tokens_;
};

TEST_F(TpKv, ForkAndTruncateBehaveAsOnOneDevice) {
  auto plain = p_.TpCache();
  p_.Tp(*plain, Rows(0, 6), H(0, 6));
  const std::vector<float> want = p_.Tp(*plain, Rows(6, 1), H(6, 1));

  auto kv = p_.TpCache();
  p_.Tp(*kv, Rows(0, 6), H(0, 6));
  kv->Fork(0, 1);
  EXPECT_TRUE(BitEqual(p_.Tp(*kv, Rows(6, 1, SeqBit(1)), H(6, 1)).data(), want.data(), e_));
  kv->Truncate(1, 6);
  kv->Truncate(0, 3);
  const std::vector<float> rewritten = p_.Tp(*kv, Rows(3, 3), H(3, 3));
  auto fresh = p_.TpCache();
  const std::vector<float> fresh_out = p_.Tp(*fresh, Rows(0, 6), H(0, 6));
  EXPECT_TRUE(BitEqual(rewritten.data(), fresh_out.data() + 3 * e_, 3 * e_));
}

TEST_F(TpKv, PoolCountsEveryShardAndRejectsForeignPages) {
  const model::KvLayout layout = p_.tp->kv_layout();
  EXPECT_EQ(layout.kv_dim, 4 * (128 / 8));  // every KV head: the pool splits the pages
  auto small = model::NewCudaTpKvPool({0, 0}, model::KvPageBytes(layout, 32));
  auto kv = p_.tp->NewKvCache(small.get());
  std::vector<float> big(40 * e_, 0.5f);
  const std::vector<Row> many = Rows(0, 40);
  const LayerSpan::Part full{kv.get(), many};
  EXPECT_EQ(p_.tp->ForwardBatch({&full, 1}, big.data()).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(kv->used_cells(), 0);
  p_.Tp(*kv, Rows(0, 32), std::vector<float>(32 * e_, 0.25f));
  EXPECT_EQ(small->used_bytes(), small->capacity_bytes());
  kv.reset();
  EXPECT_EQ(small->used_bytes(), 0u);

  // A single-device pool, a host pool and a pool over other devices are refused.
  std::vector<std::unique_ptr<model::KvPool>> foreign;
  foreign.push_back(model::NewCudaKvPool(0, kKvBytes));
  foreign.push_back(model::NewCpuKvPool(kKvBytes));
  foreign.push_back(model::NewCudaTpKvPool({0}, kKvBytes));
  for (auto& pool : foreign) {
    auto other = std::make_unique<KvCache>(pool.get(), layout);
    std::vector<float> h = H(0, 2);
    const std::vector<Row> rows = Rows(0, 2);
    const LayerSpan::Part part{other.get(), rows};
    EXPECT_EQ(p_.tp->ForwardBatch({&part, 1}, h.data()).code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(other->used_cells(), 0);
  }
}

TEST_F(TpKv, CancelKeepsNoCells) {
  auto kv = p_.TpCache();
  p_.Tp(*kv, Rows(0, 4), H(0, 4));
  const size_t used = p_.tp_pool->used_bytes();
  std::atomic<bool> cancel{true};
  std::vector<float> h = H(4, 2);
  const std::vector<Row> rows = Rows(4, 2);
  const LayerSpan::Part part{kv.get(), rows};
  EXPECT_EQ(p_.tp->ForwardBatch({&part, 1}, h.data(), &cancel).code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(kv->used_cells(), 4);
  EXPECT_EQ(p_.tp_pool->used_bytes(), used);
  // The span still works afterwards, with the same bits as a fresh cache.
  const std::vector<float> after = p_.Tp(*kv, Rows(4, 1), H(4, 1));
  auto fresh = p_.TpCache();
  const std::vector<float> want = p_.Tp(*fresh, Rows(0, 5), H(0, 5));
  EXPECT_TRUE(BitEqual(after.data(), want.data() + 4 * e_, e_));
}

// ---------------------------------------------------------------------------------------------
// Shapes that cannot be split.

TEST(TpLoad, RejectsSplitsThatDoNotDivide) {
  STRATA_SKIP_WITHOUT_GPU();
  auto load = [](const testkit::TinyModelSpec& spec,
                 std::vector<int> devices,
                 TpReducer reducer = TpReducer::kCopy) {
    auto model = model::Model::Open(TinyModel(spec));
    EXPECT_TRUE(model.ok());
    CudaTpSpanOptions o;
    o.devices = std::move(devices);
    o.reducer = reducer;
    return model::CudaTpSpanBackend::Load(*model, 0, spec.n_layer, o).status();
  };
  const testkit::TinyModelSpec q4 = Spec(DType::kQ4_0);  // 4 KV heads of 16, n_ff 256
  // 4 KV heads over 3 devices.
  absl::Status st = load(q4, {0, 0, 0});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("KV heads"), std::string::npos) << st;
  // Whole heads, but wo's slice of 2 heads x 16 = 32 columns splits only in two: 4 ways leaves
  // 16 columns, half a quant block.
  testkit::TinyModelSpec narrow = q4;
  narrow.n_embd = 64;
  narrow.n_head = 4;
  narrow.n_head_kv = 4;
  st = load(narrow, {0, 0, 0, 0});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("quant-block"), std::string::npos) << st;
  EXPECT_TRUE(load(narrow, {0, 0}).ok());
  // K-quants need 256-column slices: 512 / 4 = 128.
  st = load(Spec(DType::kQ4_K), {0, 0, 0, 0});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  // NCCL cannot take a device twice; an empty list is no span.
  EXPECT_EQ(load(q4, {0, 0}, TpReducer::kNccl).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(load(q4, {}).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata
