// Kernel benchmarks for the default model's shapes (SmolLM2-135M: Q4_1 layers, Q8_0 tied head).
//
//   BM_MatVec_<type>/<n>x<k>/threads:<t>        decode GEMV, weights streamed from DRAM: the bench
//                                               cycles through enough copies of the matrix
//                                               (>= 256 MiB) that none is cached, as in a real
//                                               forward pass over 30 layers.
//   BM_MatVec_<type>/<n>x<k>/hot/threads:<t>    the same matrix every time (L2/L3 resident, like a
//                                               node serving a few layers).
//   BM_DecodeLayer_q4_1/{separate,many}/threads:<t>
//                                               one layer's 7 decode products, 30 layers cycled;
//                                               `many` groups q/k/v and gate/up with MatMulMany.
//   BM_MatMul_<type>/<n>x<k>/m:64/threads:<t>   prefill of 64 rows.
// Bytes processed = weight bytes read, so the reported rate is the weight streaming bandwidth.
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/ops.h"
#include "kernels/quant.h"

namespace strata::kernels {
namespace {

struct Matrix {
  Matrix(DType dtype, int64_t n, int64_t k, int copies) : dtype(dtype), n(n), k(k) {
    const size_t bytes = RowBytes(dtype, k) * n;
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 0.05f);
    std::vector<float> row(k);
    Buffer first(bytes);
    for (int64_t j = 0; j < n; ++j) {
      for (float& v : row) v = normal(rng);
      QuantizeRowRef(dtype, row.data(), first.as<uint8_t>() + j * RowBytes(dtype, k), k);
    }
    buffers.resize(copies);
    for (Buffer& b : buffers) {
      b.Resize(bytes);
      std::memcpy(b.data(), first.data(), bytes);
    }
  }
  Tensor tensor(size_t i) const {
    return Tensor(buffers[i % buffers.size()].data(), dtype, {n, k});
  }
  size_t bytes() const { return RowBytes(dtype, k) * n; }

  DType dtype;
  int64_t n, k;
  std::vector<Buffer> buffers;
};

void RunMatMul(
    benchmark::State& state, DType dtype, int64_t n, int64_t k, int64_t m, bool cold, int threads) {
  const size_t one = RowBytes(dtype, k) * n;
  const int copies = cold ? static_cast<int>((size_t{256} << 20) / one + 1) : 1;
  Matrix w(dtype, n, k, copies);
  ThreadPool pool(threads);
  MatMulScratch scratch;
  std::vector<float> x(m * k), y(m * n);
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x) v = normal(rng);
  size_t i = 0;
  for (auto _ : state) {
    MatMul(w.tensor(i++), x.data(), m, y.data(), pool, scratch);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(one));
  state.counters["GMAC/s"] = benchmark::Counter(
      static_cast<double>(n * k * m) * state.iterations() / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(ActiveIsa()));
}

// One decoder layer of the default model (q, k, v, o, gate, up, down; Q4_1), for the 30 layers
// of a decode step: each iteration runs the next layer of 30 distinct copies, so weights stream
// from DRAM as in a real forward pass. `many` groups q/k/v and gate/up with MatMulMany.
void RunLayer(benchmark::State& state, bool many, int threads) {
  constexpr int kLayers = 30;
  const int64_t e = 576, kv = 192, ff = 1536;
  std::vector<Matrix> q, k, v, o, gate, up, down;
  for (int i = 0; i < kLayers; ++i) {
    q.emplace_back(DType::kQ4_1, e, e, 1);
    k.emplace_back(DType::kQ4_1, kv, e, 1);
    v.emplace_back(DType::kQ4_1, kv, e, 1);
    o.emplace_back(DType::kQ4_1, e, e, 1);
    gate.emplace_back(DType::kQ4_1, ff, e, 1);
    up.emplace_back(DType::kQ4_1, ff, e, 1);
    down.emplace_back(DType::kQ4_1, e, ff, 1);
  }
  const size_t layer_bytes = q[0].bytes() + k[0].bytes() + v[0].bytes() + o[0].bytes() +
                             gate[0].bytes() + up[0].bytes() + down[0].bytes();
  ThreadPool pool(threads);
  MatMulScratch scratch;
  std::vector<float> x(ff, 0.5f), yq(e), yk(kv), yv(kv), yo(e), yg(ff), yu(ff), yd(e);
  size_t i = 0;
  for (auto _ : state) {
    const size_t l = i++ % kLayers;
    const Tensor tq = q[l].tensor(0), tk = k[l].tensor(0), tv = v[l].tensor(0);
    const Tensor tg = gate[l].tensor(0), tu = up[l].tensor(0);
    if (many) {
      const Tensor* qkv[] = {&tq, &tk, &tv};
      float* qkv_out[] = {yq.data(), yk.data(), yv.data()};
      MatMulMany(qkv, x.data(), 1, qkv_out, pool, scratch);
    } else {
      MatMul(tq, x.data(), 1, yq.data(), pool, scratch);
      MatMul(tk, x.data(), 1, yk.data(), pool, scratch);
      MatMul(tv, x.data(), 1, yv.data(), pool, scratch);
    }
    MatMul(o[l].tensor(0), x.data(), 1, yo.data(), pool, scratch);
    if (many) {
      const Tensor* gu[] = {&tg, &tu};
      float* gu_out[] = {yg.data(), yu.data()};
      MatMulMany(gu, x.data(), 1, gu_out, pool, scratch);
    } else {
      MatMul(tg, x.data(), 1, yg.data(), pool, scratch);
      MatMul(tu, x.data(), 1, yu.data(), pool, scratch);
    }
    MatMul(down[l].tensor(0), x.data(), 1, yd.data(), pool, scratch);
    benchmark::DoNotOptimize(yd.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(layer_bytes));
  state.SetLabel(std::string(ActiveIsa()));
}

struct Shape {
  DType dtype;
  int64_t n, k;
};
// The default model's matrices: q/o 576x576, k/v 192x576, gate/up 1536x576, down 576x1536
// (all Q4_1), and the Q8_0 tied output head 49152x576.
constexpr Shape kShapes[] = {
    {DType::kQ4_1, 576, 576},
    {DType::kQ4_1, 192, 576},
    {DType::kQ4_1, 1536, 576},
    {DType::kQ4_1, 576, 1536},
    {DType::kQ8_0, 49152, 576},
};
constexpr Shape kExtraShapes[] = {
    {DType::kQ4_0, 1536, 576},
    {DType::kQ4_K, 1536, 768},
    {DType::kQ6_K, 1536, 768},
    {DType::kF16, 1536, 576},
    {DType::kBF16, 1536, 576},
    {DType::kF32, 1536, 576},
};

std::string Name(const char* kind, const Shape& s) {
  return std::string(kind) + "_" + std::string(Info(s.dtype).name) + "/" + std::to_string(s.n) +
         "x" + std::to_string(s.k);
}

void Register() {
  for (int threads : {1, 2}) {
    const std::string t = "/threads:" + std::to_string(threads);
    for (const Shape& s : kShapes) {
      benchmark::RegisterBenchmark((Name("BM_MatVec", s) + t).c_str(), [=](benchmark::State& st) {
        RunMatMul(st, s.dtype, s.n, s.k, 1, true, threads);
      })->UseRealTime();
    }
    for (const Shape& s : kShapes) {
      benchmark::RegisterBenchmark(
          (Name("BM_MatVec", s) + "/hot" + t).c_str(),
          [=](benchmark::State& st) { RunMatMul(st, s.dtype, s.n, s.k, 1, false, threads); })
          ->UseRealTime();
    }
    for (const Shape& s : kExtraShapes) {
      benchmark::RegisterBenchmark((Name("BM_MatVec", s) + t).c_str(), [=](benchmark::State& st) {
        RunMatMul(st, s.dtype, s.n, s.k, 1, true, threads);
      })->UseRealTime();
    }
    for (bool many : {false, true}) {
      benchmark::RegisterBenchmark(
          (std::string("BM_DecodeLayer_q4_1/") + (many ? "many" : "separate") + t).c_str(),
          [=](benchmark::State& st) { RunLayer(st, many, threads); })
          ->UseRealTime();
    }
    for (const Shape& s : kShapes) {
      if (s.n > 4096) continue;  // the head is computed for the last row only
      benchmark::RegisterBenchmark(
          (Name("BM_MatMul", s) + "/m:64" + t).c_str(),
          [=](benchmark::State& st) { RunMatMul(st, s.dtype, s.n, s.k, 64, false, threads); })
          ->UseRealTime();
    }
  }
}

}  // namespace
}  // namespace strata::kernels

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  strata::kernels::Register();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
