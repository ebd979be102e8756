// The CUDA row-wise ops, KV stores and attention against the CPU reference (kernels/ops.h,
// kernels/attention.h), and the batch invariance of attention (a row alone vs inside a batch:
// bit-exact).
//
// Tolerances: RmsNorm, SwiGlu: 2e-6 relative; Rope: 2e-6 absolute + 2e-6 relative (cosf/sinf
// differ by ulps); attention vs AttendHeadRef (f64): 2e-5 absolute on outputs of magnitude <= ~3;
// f16 conversion and KV stores: bit-exact.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cuda/ops.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "tests/cuda/gpu_testing.h"
#include "tests/cuda/kernels_testing.h"

namespace strata {
namespace {

namespace cu = kernels::cuda;
using testkit::DeviceVec;
using testkit::Normal;

// ---------------------------------------------------------------------------------------------
// Row-wise ops.

TEST(CudaOps, RmsNormMatchesCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  const int64_t m = 3, n = 576;
  const std::vector<float> x = Normal(m * n, 1, 3.0f), w = Normal(n, 2);
  std::vector<float> cpu(m * n);
  kernels::RmsNorm(x.data(), w.data(), m, n, 1e-5f, cpu.data());
  DeviceVec<float> dx(x), dw(w), dy(m * n);
  ASSERT_TRUE(cu::RmsNorm(dx.data(), dw.data(), m, n, 1e-5f, dy.data(), nullptr).ok());
  const std::vector<float> y = dy.Download();
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], cpu[i], 2e-6 * std::fabs(cpu[i]) + 1e-7);
}

TEST(CudaOps, RopeMatchesCpuBothModes) {
  STRATA_SKIP_WITHOUT_GPU();
  const std::vector<int32_t> pos = {0, 1, 17, 4095};
  const int64_t m = pos.size();
  for (bool neox : {false, true}) {
    for (int rot : {64, 32}) {
      const kernels::RopeParams rp{64, rot, 10000.0f, rot == 32 ? 0.5f : 1.0f, neox};
      const int heads = 3;
      const int64_t ld = heads * 64 + 8;  // strided rows: only the heads are touched
      std::vector<float> x = Normal(m * ld, 3);
      std::vector<float> cpu(m * heads * 64);
      for (int64_t i = 0; i < m; ++i) {
        std::copy(
            x.begin() + i * ld, x.begin() + i * ld + heads * 64, cpu.begin() + i * heads * 64);
      }
      kernels::Rope(cpu.data(), pos.data(), m, heads, rp);
      DeviceVec<float> dx(x);
      DeviceVec<int32_t> dp(pos);
      ASSERT_TRUE(cu::Rope(dx.data(),
                           ld,
                           dp.data(),
                           m,
                           heads,
                           {rp.head_dim, rp.rot_dim, rp.base, rp.freq_scale, rp.neox},
                           nullptr)
                      .ok());
      const std::vector<float> y = dx.Download();
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < heads * 64; ++j) {
          const float want = cpu[i * heads * 64 + j];
          ASSERT_NEAR(y[i * ld + j], want, 2e-6 + 2e-6 * std::fabs(want))
              << "neox " << neox << " rot " << rot << " row " << i << " col " << j;
        }
        for (int64_t j = heads * 64; j < ld; ++j) ASSERT_EQ(y[i * ld + j], x[i * ld + j]);
      }
    }
  }
}

TEST(CudaOps, SwiGluAddSumAndConversions) {
  STRATA_SKIP_WITHOUT_GPU();
  const int64_t m = 2, n = 300;
  const std::vector<float> g = Normal(m * 2 * n, 1, 4.0f);
  std::vector<float> gate(m * n), up(m * n), cpu(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      gate[i * n + j] = g[i * 2 * n + j];
      up[i * n + j] = g[i * 2 * n + n + j];
    }
  }
  kernels::SwiGlu(gate.data(), up.data(), m * n, cpu.data());
  DeviceVec<float> dg(g), dout(m * n);
  ASSERT_TRUE(cu::SwiGlu(dg.data(), dg.data() + n, 2 * n, m, n, dout.data(), n, nullptr).ok());
  const std::vector<float> out = dout.Download();
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_NEAR(out[i], cpu[i], 2e-6 * std::fabs(cpu[i]) + 1e-7) << i;
  }

  const std::vector<float> a = Normal(1000, 2), b = Normal(3000, 3);
  DeviceVec<float> da(a), db(b);
  ASSERT_TRUE(cu::Add(da.data(), db.data(), 1000, nullptr).ok());
  std::vector<float> sum = da.Download();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(sum[i], a[i] + b[i]);
  DeviceVec<float> parts(b), acc(a);
  ASSERT_TRUE(cu::SumParts(parts.data(), 3, 1000, acc.data(), true, nullptr).ok());
  sum = acc.Download();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(sum[i], a[i] + ((b[i] + b[1000 + i]) + b[2000 + i]));

  // f32 -> f16 over awkward values, and f16 -> f32 over every finite pattern.
  std::vector<float> f = Normal(4096, 4, 100.0f);
  for (float v : {0.0f, -0.0f, 1e-8f, 6e-8f, 3e-5f, 65504.0f, 65520.0f, 1e6f, -1e6f, INFINITY}) {
    f.push_back(v);
  }
  DeviceVec<float> df(f);
  DeviceVec<uint16_t> dh(f.size());
  ASSERT_TRUE(cu::ConvertF32ToF16(df.data(), dh.data(), f.size(), nullptr).ok());
  const std::vector<uint16_t> h = dh.Download();
  for (size_t i = 0; i < f.size(); ++i) ASSERT_EQ(h[i], kernels::Fp32ToFp16(f[i])) << f[i];
  std::vector<uint16_t> all;
  for (uint32_t v = 0; v < 65536; ++v) {
    if (((v >> 10) & 0x1F) != 0x1F) all.push_back(static_cast<uint16_t>(v));
  }
  DeviceVec<uint16_t> dall(all);
  DeviceVec<float> back(all.size());
  ASSERT_TRUE(cu::ConvertF16ToF32(dall.data(), back.data(), all.size(), nullptr).ok());
  const std::vector<float> bf = back.Download();
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(bf[i], kernels::Fp16ToFp32(all[i]));
}

// ---------------------------------------------------------------------------------------------
// KV stores and attention over a paged cache laid out as KvCache does.

struct PagedKv {
  int layers = 2, page_cells = 4, kv_dim = 0, pages = 0;
  std::vector<std::vector<uint16_t>> host;  // per page
  std::vector<DeviceVec<uint16_t>> dev;
  DeviceVec<uint64_t> table;

  PagedKv(int kv_dim_, int pages_, uint64_t seed) : kv_dim(kv_dim_), pages(pages_) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<uint64_t> t;
    dev.resize(pages);
    for (int p = 0; p < pages; ++p) {
      host.emplace_back(static_cast<size_t>(layers) * 2 * page_cells * kv_dim);
      for (uint16_t& v : host.back()) v = kernels::Fp32ToFp16(dist(rng));
      dev[p].Upload(host.back());
      t.push_back(reinterpret_cast<uint64_t>(dev[p].data()));
    }
    table.Upload(t);
  }
  const uint16_t* Cell(int slot, int layer, int which) const {
    return host[slot / page_cells].data() +
           ((static_cast<size_t>(layer) * 2 + which) * page_cells + slot % page_cells) * kv_dim;
  }
};

struct AttnCase {
  int head_dim, n_head, n_head_kv;
};

void PrintTo(const AttnCase& c, std::ostream* os) {
  *os << "head_dim " << c.head_dim << ", " << c.n_head << " heads, " << c.n_head_kv << " KV heads";
}

class CudaAttention : public ::testing::TestWithParam<AttnCase> {};

TEST_P(CudaAttention, MatchesReferenceAndIsBatchInvariant) {
  STRATA_SKIP_WITHOUT_GPU();
  const AttnCase c = GetParam();
  const int hd = c.head_dim, kv_dim = c.n_head_kv * hd, q_dim = c.n_head * hd;
  const int layer = 1;
  PagedKv kv(kv_dim, 80, 21);  // 320 cells
  // Three rows: 1, 130 (two chunks) and 300 visible cells, in a scrambled slot order.
  std::mt19937_64 rng(5);
  std::vector<int32_t> slots(320);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  const std::vector<int> counts = {1, 130, 300};
  std::vector<int32_t> visible;
  std::vector<cu::KvRowInfo> rows;
  for (int n : counts) {
    cu::KvRowInfo r;
    r.slot = slots[n - 1];  // its own cell is visible
    r.vis_offset = static_cast<int32_t>(visible.size());
    r.vis_count = n;
    r.table_offset = 0;
    r.page_cells = kv.page_cells;
    visible.insert(visible.end(), slots.begin(), slots.begin() + n);
    rows.push_back(r);
  }
  const int64_t m = rows.size();
  const std::vector<float> q = Normal(m * q_dim, 8);
  DeviceVec<float> dq(q), dout(m * q_dim);
  DeviceVec<int32_t> dvis(visible);
  DeviceVec<cu::KvRowInfo> drows(rows);
  cu::KvArgs args{drows.data(),
                  dvis.data(),
                  reinterpret_cast<uint16_t* const*>(kv.table.data()),
                  layer,
                  kv_dim};
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const cu::AttentionArgs aa{c.n_head, c.n_head_kv, hd, scale};
  ASSERT_TRUE(cu::Attention(dq.data(), q_dim, m, aa, args, dout.data(), q_dim, nullptr).ok());
  const std::vector<float> out = dout.Download();
  for (int64_t i = 0; i < m; ++i) {
    const int n = counts[i];
    for (int h = 0; h < c.n_head; ++h) {
      const int kvh = h / (c.n_head / c.n_head_kv);
      std::vector<const uint16_t*> kp(n), vp(n);
      for (int j = 0; j < n; ++j) {
        kp[j] = kv.Cell(visible[rows[i].vis_offset + j], layer, 0) + kvh * hd;
        vp[j] = kv.Cell(visible[rows[i].vis_offset + j], layer, 1) + kvh * hd;
      }
      std::vector<float> ref(hd);
      kernels::AttendHeadRef(
          q.data() + i * q_dim + h * hd, kp.data(), vp.data(), n, hd, scale, ref.data());
      for (int d = 0; d < hd; ++d) {
        ASSERT_NEAR(out[i * q_dim + h * hd + d], ref[d], 2e-5)
            << "row " << i << " head " << h << " dim " << d;
      }
    }
  }
  // Each row alone: bit-identical.
  for (int64_t i = 0; i < m; ++i) {
    DeviceVec<cu::KvRowInfo> one(std::vector<cu::KvRowInfo>{rows[i]});
    DeviceVec<float> qi(std::vector<float>(q.begin() + i * q_dim, q.begin() + (i + 1) * q_dim));
    DeviceVec<float> oi(q_dim);
    cu::KvArgs a1 = args;
    a1.rows = one.data();
    ASSERT_TRUE(cu::Attention(qi.data(), q_dim, 1, aa, a1, oi.data(), q_dim, nullptr).ok());
    const std::vector<float> o = oi.Download();
    ASSERT_EQ(0, std::memcmp(o.data(), out.data() + i * q_dim, q_dim * sizeof(float))) << i;
  }

  // StoreKv: rows' K and V land, as f16, in their cells.
  const std::vector<float> kvrows = Normal(m * 2 * kv_dim, 9);
  DeviceVec<float> dkv(kvrows);
  ASSERT_TRUE(cu::StoreKv(dkv.data(), dkv.data() + kv_dim, 2 * kv_dim, m, args, nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (int64_t i = 0; i < m; ++i) {
    const int slot = rows[i].slot;
    std::vector<uint16_t> page = kv.dev[slot / kv.page_cells].Download();
    for (int which = 0; which < 2; ++which) {
      const uint16_t* cell =
          page.data() + ((layer * 2 + which) * kv.page_cells + slot % kv.page_cells) * kv_dim;
      for (int e = 0; e < kv_dim; ++e) {
        ASSERT_EQ(cell[e], kernels::Fp32ToFp16(kvrows[i * 2 * kv_dim + which * kv_dim + e]));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes,
                         CudaAttention,
                         ::testing::Values(AttnCase{16, 4, 2},
                                           AttnCase{36, 2, 2},
                                           AttnCase{64, 9, 3},
                                           AttnCase{128, 4, 4},
                                           AttnCase{200, 2, 1}),
                         [](const auto& info) {
                           return "hd" + std::to_string(info.param.head_dim) + "_h" +
                                  std::to_string(info.param.n_head) + "_kv" +
                                  std::to_string(info.param.n_head_kv);
                         });

}  // namespace
}  // namespace strata
