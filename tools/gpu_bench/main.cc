// strata-gpu-bench: GPU numbers as JSON.
//
//   gemv:   the decode product (one activation row) per weight type and shape, timed with CUDA
//           events over a CUDA graph of back-to-back launches that cycle through enough weight
//           copies to defeat the L2 cache; bandwidth = weight bytes read / time, and its share of
//           the card's peak (2 x memory clock x bus width, or --peak-gbps).
//   models: CudaSpanBackend over each --model (all its layers): prefill tokens/s (one batch of
//           --prefill rows), decode tokens/s (one row per step after --prefill rows of context),
//           batched decode rows/s (--sessions sessions, one row each per step), the effective
//           weight bandwidth of a decode step, and for partial 7B-shaped files the per-layer time
//           extrapolated to 32 layers.
//
//   gemv variants (--gemv-variants): every Q4_0/Q4_1 decode-product variant on the 7B shapes,
//           timed the same way, then a table per dtype (% of peak per shape) naming the best.
//
//   strata-gpu-bench --model /tmp/llama7b-q4_0-4l.gguf --json out.json
//   strata-gpu-bench --gemv-variants --json variants.json
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/weights.h"
#include "model/cuda/span.h"
#include "model/llama.h"

namespace {

namespace cu = strata::kernels::cuda;
using strata::kernels::DType;
using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const absl::Status& st, const char* what) {
  std::fprintf(stderr, "%s: %s\n", what, std::string(st.message()).c_str());
  std::exit(1);
}
template <typename T>
T Must(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(v.status(), what);
  return std::move(*v);
}
void Must(const absl::Status& st, const char* what) {
  if (!st.ok()) Die(st, what);
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// ---------------------------------------------------------------------------------------------
// Decode GEMV bandwidth.

// Weights (enough copies to defeat L2), one quantized activation row and an output, for timing
// decode products of one dtype and shape.
struct GemvRig {
  DType dtype;
  int64_t n = 0, k = 0;
  size_t bytes = 0;  // weight bytes of one copy (what one product reads)
  cu::DeviceArena arena;
  std::vector<cu::DeviceWeightView> ws;
  cu::DeviceBuffer x, q, meta, y;
  cu::Stream stream;
  cu::DeviceActView view;
};

std::unique_ptr<GemvRig> MakeGemvRig(DType dtype, int64_t n, int64_t k, const cu::DeviceInfo& dev) {
  auto rig = std::make_unique<GemvRig>();
  rig->dtype = dtype;
  rig->n = n;
  rig->k = k;
  rig->bytes = cu::UploadBytes(dtype, n, k);
  const size_t bytes = rig->bytes;
  // Enough distinct copies that consecutive launches never find their weights in L2.
  const size_t want = std::max<size_t>(4 * dev.l2_bytes, size_t{512} << 20);
  const int copies = static_cast<int>(std::clamp<size_t>((want + bytes - 1) / bytes, 2, 64));
  rig->arena = Must(cu::DeviceArena::Create(0, bytes * copies + (size_t{1} << 20)), "arena");
  {
    // Random codes and scales (values do not change the timing); one host copy, then D2D.
    const cu::WeightRowBytes rb = cu::DeviceRowBytes(dtype, k);
    std::vector<uint8_t> host(rb.q * n + rb.s * n + rb.d * n);
    std::mt19937_64 rng(42);
    for (size_t i = 0; i + 8 <= host.size(); i += 8) {
      const uint64_t v = rng() & 0x3BFF3BFF3BFF3BFFull;  // finite halves where read as f16
      std::memcpy(host.data() + i, &v, 8);
    }
    for (int c = 0; c < copies; ++c) {
      cu::DeviceWeightView w;
      w.dtype = dtype;
      w.n = n;
      w.k = k;
      uint8_t* q = Must(rig->arena.Take(rb.q * n), "take");
      Must(cu::CudaStatus(cudaMemcpy(q, host.data(), rb.q * n, cudaMemcpyHostToDevice), "copy"),
           "copy");
      w.q = q;
      if (rb.s) {
        uint8_t* s = Must(rig->arena.Take(rb.s * n), "take");
        Must(cu::CudaStatus(cudaMemcpy(s, host.data() + rb.q * n, rb.s * n, cudaMemcpyHostToDevice),
                            "copy"),
             "copy");
        w.s = s;
      }
      if (rb.d) {
        uint8_t* d = Must(rig->arena.Take(rb.d * n), "take");
        Must(cu::CudaStatus(
                 cudaMemcpy(d, host.data() + (rb.q + rb.s) * n, rb.d * n, cudaMemcpyHostToDevice),
                 "copy"),
             "copy");
        w.d = d;
      }
      rig->ws.push_back(w);
    }
  }
  const cu::ActFormat fmt = cu::ActFormatFor(dtype);
  rig->x = Must(cu::DeviceBuffer::Allocate(0, k * sizeof(float)), "alloc");
  rig->q = Must(cu::DeviceBuffer::Allocate(0, cu::ActCodeBytes(1, k)), "alloc");
  rig->meta = Must(cu::DeviceBuffer::Allocate(0, cu::ActMetaBytes(1, k)), "alloc");
  rig->y = Must(cu::DeviceBuffer::Allocate(0, n * sizeof(float)), "alloc");
  std::vector<float> hx(k);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& v : hx) v = dist(rng);
  Must(cu::CudaStatus(
           cudaMemcpy(rig->x.data(), hx.data(), k * sizeof(float), cudaMemcpyHostToDevice), "copy"),
       "copy");
  rig->stream = Must(cu::Stream::Create(0), "stream");
  cu::DeviceActView& view = rig->view;
  view.format = fmt;
  view.k = k;
  if (fmt == cu::ActFormat::kF32) {
    view.f = rig->x.as<float>();
    view.ldf = k;
  } else {
    Must(cu::QuantizeActivations(fmt,
                                 rig->x.as<float>(),
                                 k,
                                 1,
                                 k,
                                 rig->q.as<int8_t>(),
                                 rig->meta.as<float>(),
                                 rig->stream.get()),
         "quantize");
    view.q = rig->q.as<int8_t>();
    view.meta = rig->meta.as<float>();
  }
  return rig;
}

struct GemvTime {
  double us_stream = 0, us_graph = 0;
  double best() const { return std::min(us_stream, us_graph); }
};

// Microseconds per product: `product(w)` launched for every weight copy in turn, `replays`
// passes, on the stream directly and as one captured CUDA graph. The first failed launch, capture
// or instantiation is returned instead (a variant the card or runtime cannot run).
template <typename Product>
absl::StatusOr<GemvTime> TimeGemv(GemvRig& rig, Product&& product, int replays) {
  cudaStream_t stream = rig.stream.get();
  absl::Status failed;
  auto launch_all = [&] {
    for (const cu::DeviceWeightView& w : rig.ws) {
      if (absl::Status st = product(w); !st.ok() && failed.ok()) failed = st;
    }
  };
  cu::Event start = Must(cu::Event::Create(0, true), "event");
  cu::Event stop = Must(cu::Event::Create(0, true), "event");
  auto time_us = [&](auto&& body, int reps) {
    body();  // warm up
    Must(rig.stream.Synchronize(), "sync");
    cudaEventRecord(start.get(), stream);
    for (int r = 0; r < reps; ++r) body();
    cudaEventRecord(stop.get(), stream);
    Must(cu::CudaStatus(cudaEventSynchronize(stop.get()), "sync"), "sync");
    float ms = 0;
    cudaEventElapsedTime(&ms, start.get(), stop.get());
    return 1000.0 * ms / (static_cast<double>(reps) * rig.ws.size());
  };
  GemvTime t;
  t.us_stream = time_us(launch_all, replays);
  if (!failed.ok()) return failed;
  // The same launches captured once into a graph and replayed.
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  RETURN_IF_ERROR(
      cu::CudaStatus(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture"));
  launch_all();
  const absl::Status ended = cu::CudaStatus(cudaStreamEndCapture(stream, &graph), "capture");
  if (!failed.ok() || !ended.ok()) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();
    return failed.ok() ? ended : failed;
  }
  if (absl::Status st = cu::CudaStatus(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
      !st.ok()) {
    cudaGraphDestroy(graph);
    return st;
  }
  t.us_graph = time_us([&] { cudaGraphLaunch(exec, stream); }, replays);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return t;
}

nlohmann::json BenchGemv(
    DType dtype, int64_t n, int64_t k, const cu::DeviceInfo& dev, double peak_gbps, int replays) {
  std::unique_ptr<GemvRig> rig = MakeGemvRig(dtype, n, k, dev);
  const GemvTime t =
      Must(TimeGemv(
               *rig,
               [&](const cu::DeviceWeightView& w) {
                 return cu::MatMul(w, rig->view, 1, rig->y.as<float>(), n, {}, rig->stream.get());
               },
               replays),
           "gemv");
  const size_t bytes = rig->bytes;
  const double gbps = bytes / (t.best() * 1e-6) / 1e9;
  nlohmann::json j;
  j["dtype"] = std::string(strata::kernels::Info(dtype).name);
  j["n"] = n;
  j["k"] = k;
  j["weight_bytes"] = bytes;
  j["copies"] = rig->ws.size();
  j["us_stream"] = t.us_stream;
  j["us_graph"] = t.us_graph;
  j["gbps"] = gbps;
  j["gbps_stream"] = bytes / (t.us_stream * 1e-6) / 1e9;
  if (peak_gbps > 0) j["share_of_peak"] = gbps / peak_gbps;
  std::fprintf(stderr,
               "gemv %-5s %5ldx%-5ld %7.1f us (graph %7.1f us)  %7.0f GB/s  %.0f%% of peak\n",
               std::string(strata::kernels::Info(dtype).name).c_str(),
               static_cast<long>(n),
               static_cast<long>(k),
               t.us_stream,
               t.us_graph,
               gbps,
               peak_gbps > 0 ? 100 * gbps / peak_gbps : 0.0);
  return j;
}

// Every decode-product variant (cu::MatMulGemvVariant) of `dtype` on every shape, timed as
// BenchGemv times MatMul; then a table (share of peak per shape, worst and mean) and the best
// variant: the highest worst-shape share, ties broken by the mean.
nlohmann::json BenchGemvVariants(DType dtype,
                                 std::span<const std::pair<int64_t, int64_t>> shapes,
                                 const cu::DeviceInfo& dev,
                                 double peak_gbps,
                                 int replays) {
  const std::string tname(strata::kernels::Info(dtype).name);
  const int nv = cu::GemvVariantCount();
  std::vector<std::vector<double>> gbps(nv, std::vector<double>(shapes.size()));
  nlohmann::json runs = nlohmann::json::array();
  for (size_t si = 0; si < shapes.size(); ++si) {
    const auto [n, k] = shapes[si];
    std::unique_ptr<GemvRig> rig = MakeGemvRig(dtype, n, k, dev);
    for (int v = 0; v < nv; ++v) {
      const absl::StatusOr<GemvTime> timed = TimeGemv(
          *rig,
          [&](const cu::DeviceWeightView& w) {
            return cu::MatMulGemvVariant(
                w, rig->view, 1, rig->y.as<float>(), n, {}, v, rig->stream.get());
          },
          replays);
      if (!timed.ok()) {  // counted as 0 GB/s, so it is never the best
        std::fprintf(stderr,
                     "variant %-20s %-5s %5ldx%-5ld failed: %s\n",
                     cu::GemvVariantName(v),
                     tname.c_str(),
                     static_cast<long>(n),
                     static_cast<long>(k),
                     std::string(timed.status().message()).c_str());
        runs.push_back({{"dtype", tname},
                        {"variant", v},
                        {"name", cu::GemvVariantName(v)},
                        {"n", n},
                        {"k", k},
                        {"error", std::string(timed.status().message())}});
        continue;
      }
      const GemvTime t = *timed;
      gbps[v][si] = rig->bytes / (t.best() * 1e-6) / 1e9;
      std::fprintf(stderr,
                   "variant %-20s %-5s %5ldx%-5ld %7.2f us (graph %7.2f us)  %6.0f GB/s  %3.0f%%\n",
                   cu::GemvVariantName(v),
                   tname.c_str(),
                   static_cast<long>(n),
                   static_cast<long>(k),
                   t.us_stream,
                   t.us_graph,
                   gbps[v][si],
                   peak_gbps > 0 ? 100 * gbps[v][si] / peak_gbps : 0.0);
      nlohmann::json j = {{"dtype", tname},
                          {"variant", v},
                          {"name", cu::GemvVariantName(v)},
                          {"n", n},
                          {"k", k},
                          {"weight_bytes", rig->bytes},
                          {"us_stream", t.us_stream},
                          {"us_graph", t.us_graph},
                          {"gbps", gbps[v][si]}};
      if (peak_gbps > 0) j["share_of_peak"] = gbps[v][si] / peak_gbps;
      runs.push_back(j);
    }
  }
  // The table: one line per variant, % of peak (GB/s when no peak is known) per shape.
  const double unit = peak_gbps > 0 ? peak_gbps / 100 : 1.0;
  std::fprintf(stderr,
               "\n%s decode variants, %s\n%-22s",
               tname.c_str(),
               peak_gbps > 0 ? "% of peak" : "GB/s",
               "variant");
  for (auto [n, k] : shapes) {
    std::fprintf(stderr, " %11s", (std::to_string(n) + "x" + std::to_string(k)).c_str());
  }
  std::fprintf(stderr, " %7s %7s\n", "worst", "mean");
  int best = 0;
  double best_worst = -1, best_mean = -1;
  for (int v = 0; v < nv; ++v) {
    double worst = 1e300, mean = 0;
    std::fprintf(stderr, "%-22s", cu::GemvVariantName(v));
    for (double g : gbps[v]) {
      std::fprintf(stderr, " %11.1f", g / unit);
      worst = std::min(worst, g);
      mean += g / gbps[v].size();
    }
    std::fprintf(stderr,
                 " %7.1f %7.1f%s\n",
                 worst / unit,
                 mean / unit,
                 v == cu::kDefaultGemvVariant ? "  (default)" : "");
    if (worst > best_worst || (worst == best_worst && mean > best_mean)) {
      best = v;
      best_worst = worst;
      best_mean = mean;
    }
  }
  // Per shape too, in case no single variant wins everywhere.
  nlohmann::json per_shape = nlohmann::json::array();
  for (size_t si = 0; si < shapes.size(); ++si) {
    int b = 0;
    for (int v = 1; v < nv; ++v) {
      if (gbps[v][si] > gbps[b][si]) b = v;
    }
    std::fprintf(stderr,
                 "best for %ldx%ld: %d %s (%.1f)\n",
                 static_cast<long>(shapes[si].first),
                 static_cast<long>(shapes[si].second),
                 b,
                 cu::GemvVariantName(b),
                 gbps[b][si] / unit);
    per_shape.push_back({{"n", shapes[si].first},
                         {"k", shapes[si].second},
                         {"variant", b},
                         {"name", cu::GemvVariantName(b)},
                         {"gbps", gbps[b][si]}});
  }
  std::fprintf(stderr,
               "best %s variant: %d %s (worst shape %.1f, mean %.1f); default: %d %s\n\n",
               tname.c_str(),
               best,
               cu::GemvVariantName(best),
               best_worst / unit,
               best_mean / unit,
               cu::kDefaultGemvVariant,
               cu::GemvVariantName(cu::kDefaultGemvVariant));
  return {{"dtype", tname},
          {"runs", runs},
          {"best", {{"variant", best}, {"name", cu::GemvVariantName(best)}}},
          {"best_per_shape", per_shape},
          {"default",
           {{"variant", cu::kDefaultGemvVariant},
            {"name", cu::GemvVariantName(cu::kDefaultGemvVariant)}}}};
}

// ---------------------------------------------------------------------------------------------
// A whole span.

std::vector<float> RandomRows(int64_t rows, int64_t e, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> h(rows * e);
  for (float& v : h) v = dist(rng);
  return h;
}

nlohmann::json BenchModel(
    const std::string& path, int prefill, int decode_steps, int sessions, double peak_gbps) {
  using strata::model::LayerSpan;
  using strata::model::Row;
  auto model = Must(strata::model::Model::Open(path), "open model");
  const auto& hp = model->hparams();
  const auto t0 = Clock::now();
  auto backend = Must(strata::model::CudaSpanBackend::Load(model, 0, hp.n_layer), "load span");
  const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const int64_t e = hp.n_embd;
  auto pool = strata::model::NewCudaKvPool(0, size_t{16} << 30);
  std::string wtype = "?";
  if (auto t = model->Weight("blk.0.attn_q.weight", {hp.q_dim(), e}); t.ok()) {
    wtype = std::string(strata::kernels::Info(t->dtype).name);
  }
  std::fprintf(stderr,
               "model %s: %d layers, %s, %.2f GB on the GPU (loaded in %.1f s)\n",
               path.c_str(),
               hp.n_layer,
               wtype.c_str(),
               backend->weight_bytes() / 1e9,
               load_s);

  auto forward = [&](strata::model::KvCache& kv, int32_t pos, int n, uint64_t seed) {
    std::vector<Row> rows(n);
    for (int i = 0; i < n; ++i) rows[i] = {pos + i, 1};
    std::vector<float> h = RandomRows(n, e, seed);
    const LayerSpan::Part part{&kv, rows};
    const auto s = Clock::now();
    Must(backend->ForwardBatch({&part, 1}, h.data()), "forward");
    return std::chrono::duration<double, std::milli>(Clock::now() - s).count();
  };
  {  // warm up: scratch sized for the largest batch, kernels loaded
    auto kv = backend->NewKvCache(pool.get());
    forward(*kv, 0, prefill, 1);
    forward(*kv, prefill, 1, 2);
  }
  nlohmann::json j;
  j["path"] = path;
  j["name"] = hp.model_name;
  j["layers"] = hp.n_layer;
  j["n_embd"] = e;
  j["n_ff"] = hp.n_ff;
  j["weight_type"] = wtype;
  j["weight_bytes_on_gpu"] = backend->weight_bytes();
  j["load_s"] = load_s;
  j["device"] = backend->name();

  auto kv = backend->NewKvCache(pool.get());
  const double prefill_ms = forward(*kv, 0, prefill, 3);
  j["prefill"] = {
      {"rows", prefill}, {"ms", prefill_ms}, {"tokens_per_s", prefill / (prefill_ms / 1000.0)}};
  std::vector<double> steps;
  for (int i = 0; i < decode_steps; ++i) steps.push_back(forward(*kv, prefill + i, 1, 100 + i));
  const double step_ms = Median(steps);
  const double per_layer_ms = step_ms / hp.n_layer;
  const double eff_gbps = backend->weight_bytes() / (step_ms / 1000.0) / 1e9;
  j["decode"] = {{"context", prefill},
                 {"steps", decode_steps},
                 {"ms_per_token", step_ms},
                 {"tokens_per_s", 1000.0 / step_ms},
                 {"ms_per_layer", per_layer_ms},
                 {"effective_weight_gbps", eff_gbps}};
  if (peak_gbps > 0) j["decode"]["effective_share_of_peak"] = eff_gbps / peak_gbps;
  if (e == 4096) j["decode"]["tokens_per_s_at_32_layers"] = 1000.0 / (per_layer_ms * 32);

  // Batched decode: `sessions` sessions with 64 tokens of context, one row each per step.
  std::vector<std::unique_ptr<strata::model::KvCache>> caches;
  for (int s = 0; s < sessions; ++s) {
    caches.push_back(backend->NewKvCache(pool.get()));
    forward(*caches.back(), 0, 64, 1000 + s);
  }
  std::vector<double> batch_steps;
  for (int step = 0; step < std::max(4, decode_steps / 4); ++step) {
    std::vector<Row> rows(sessions);
    std::vector<LayerSpan::Part> parts(sessions);
    for (int s = 0; s < sessions; ++s) {
      rows[s] = {64 + step, 1};
      parts[s] = {caches[s].get(), std::span<const Row>(&rows[s], 1)};
    }
    std::vector<float> h = RandomRows(sessions, e, 5000 + step);
    const auto s0 = Clock::now();
    Must(backend->ForwardBatch(parts, h.data()), "batched forward");
    batch_steps.push_back(std::chrono::duration<double, std::milli>(Clock::now() - s0).count());
  }
  const double batch_ms = Median(batch_steps);
  j["batched_decode"] = {{"sessions", sessions},
                         {"ms_per_step", batch_ms},
                         {"rows_per_s", sessions / (batch_ms / 1000.0)}};
  std::fprintf(stderr,
               "  prefill %d rows: %.1f ms (%.0f tok/s); decode: %.3f ms/token (%.1f tok/s, "
               "%.0f GB/s of weights); %d sessions: %.0f rows/s\n",
               prefill,
               prefill_ms,
               prefill / (prefill_ms / 1000.0),
               step_ms,
               1000.0 / step_ms,
               eff_gbps,
               sessions,
               sessions / (batch_ms / 1000.0));
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CUDA benchmarks: decode GEMV bandwidth and CudaSpanBackend tokens/s (JSON)"};
  std::vector<std::string> models;
  std::string json_path;
  double peak_gbps = 0;
  int prefill = 512, decode_steps = 32, sessions = 16, replays = 20;
  bool skip_gemv = false, all_types = false, gemv_variants = false;
  app.add_option("--model", models, "GGUF model(s) to run as one CUDA span each");
  app.add_option("--json", json_path, "Also write the JSON here");
  app.add_option(
      "--peak-gbps", peak_gbps, "Peak memory bandwidth, GB/s (default: from the device)");
  app.add_option("--prefill", prefill, "Rows of the prefill batch (and decode context)")
      ->capture_default_str();
  app.add_option("--decode-steps", decode_steps, "Decode steps timed")->capture_default_str();
  app.add_option("--sessions", sessions, "Sessions in the batched decode")->capture_default_str();
  app.add_option("--replays", replays, "Timed passes over the GEMV copies")->capture_default_str();
  app.add_flag("--skip-gemv", skip_gemv, "Only the models");
  app.add_flag("--all-types", all_types, "GEMV for every weight type, not just q4_0/f16/q4_1");
  app.add_flag("--gemv-variants",
               gemv_variants,
               "Time every Q4_0/Q4_1 decode-product variant on the 7B shapes (instead of the "
               "per-type GEMV), print a table and name the best");
  CLI11_PARSE(app, argc, argv);

  auto count = cu::DeviceCount();
  if (!count.ok()) {
    std::fprintf(stderr, "%s\n", std::string(count.status().message()).c_str());
    return 1;
  }
  const cu::DeviceInfo dev = Must(cu::GetDeviceInfo(0), "device");
  const double peak = peak_gbps > 0 ? peak_gbps : dev.peak_gbps;
  std::fprintf(stderr,
               "%s: %d SMs, %.1f GiB, L2 %zu MiB, peak %.0f GB/s%s\n",
               dev.name.c_str(),
               dev.sm_count,
               dev.total_bytes / 1073741824.0,
               dev.l2_bytes >> 20,
               peak,
               peak_gbps > 0 ? " (given)" : "");
  nlohmann::json out;
  out["device"] = {
      {"name", dev.name},
      {"compute_capability", std::to_string(dev.cc_major) + "." + std::to_string(dev.cc_minor)},
      {"sm_count", dev.sm_count},
      {"memory_bytes", dev.total_bytes},
      {"l2_bytes", dev.l2_bytes},
      {"peak_gbps", peak},
      {"peak_gbps_source", peak_gbps > 0 ? "flag" : "device attributes"}};
  // The 7B products: wq (wk, wv, wo), w_gate / w_up, w_down, and the stacked q|k|v and
  // gate|up matrices the CUDA span actually runs.
  const std::pair<int64_t, int64_t> shapes[] = {
      {4096, 4096}, {11008, 4096}, {4096, 11008}, {12288, 4096}, {22016, 4096}};
  if (gemv_variants) {
    nlohmann::json vs = nlohmann::json::array();
    for (DType t : {DType::kQ4_0, DType::kQ4_1}) {
      vs.push_back(BenchGemvVariants(t, shapes, dev, peak, replays));
    }
    out["gemv_variants"] = vs;
  } else if (!skip_gemv) {
    std::vector<DType> types = {DType::kQ4_0, DType::kF16, DType::kQ4_1};
    if (all_types) {
      types.insert(types.end(), {DType::kQ8_0, DType::kQ4_K, DType::kQ6_K, DType::kBF16});
    }
    nlohmann::json gemv = nlohmann::json::array();
    for (DType t : types) {
      for (auto [n, k] : shapes) gemv.push_back(BenchGemv(t, n, k, dev, peak, replays));
    }
    out["gemv"] = gemv;
  }
  nlohmann::json ms = nlohmann::json::array();
  for (const std::string& m : models) {
    ms.push_back(BenchModel(m, prefill, decode_steps, sessions, peak));
  }
  out["models"] = ms;
  const std::string text = out.dump(2);
  std::printf("%s\n", text.c_str());
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << text << "\n";
  }
  return 0;
}
