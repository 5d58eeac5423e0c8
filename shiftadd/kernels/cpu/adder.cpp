// shiftadd CPU extension: fused adder (L1-distance) kernels, int8 SAD adder and integer
// power-of-two shift kernels.
//
// Nothing here ever materialises the (G x P x O x K) difference tensor, and the conv entry
// points never build the whole im2col matrix either: patches are packed block by block
// (a few hundred output positions at a time) into a buffer that stays in cache, the block
// kernels of isa.h run on it, and results go straight to the NCHW output.
// Threads: at::parallel_for over independent blocks.
// Only light headers (the full <torch/extension.h> costs ~40 s of compile time per build):
// the functions are registered as torch operators (torch.ops.shiftadd_cpu.*), not via pybind.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "isa.h"

namespace shiftadd_cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// instruction-set selection

bool cpu_has_avx512() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  if (kernels_avx512() && cpu_has_avx512()) out.push_back("avx512");
  if (kernels_avx2() && cpu_has_avx2()) out.push_back("avx2");
  out.push_back("scalar");
  return out;
}

const Kernels* kernels_by_name(const std::string& name) {
  if (name == "avx512" && kernels_avx512() && cpu_has_avx512()) return kernels_avx512();
  if (name == "avx2" && kernels_avx2() && cpu_has_avx2()) return kernels_avx2();
  if (name == "scalar") return kernels_scalar();
  return nullptr;
}

std::atomic<const Kernels*> g_kernels{nullptr};

const Kernels& K_() {
  const Kernels* k = g_kernels.load();
  if (!k) {
    k = kernels_by_name(supported_isas().front());
    g_kernels.store(k);
  }
  return *k;
}

// ---------------------------------------------------------------------------------------------
// shapes and blocking

using Conv = ConvGeom;

Conv conv_shape(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride,
                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(x.dim() == 4 && w.dim() == 4, "adder conv: x must be (N, C, H, W) and weight (O, C/groups, kh, kw)");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "adder conv: stride, padding and dilation need 2 values");
  Conv s;
  s.N = x.size(0); s.C = x.size(1); s.H = x.size(2); s.Wd = x.size(3);
  s.O = w.size(0); s.G = groups; s.Cg = w.size(1); s.kh = w.size(2); s.kw = w.size(3);
  s.sh = stride[0]; s.sw = stride[1]; s.ph = padding[0]; s.pw = padding[1];
  s.dh = dilation[0]; s.dw = dilation[1];
  TORCH_CHECK(groups >= 1 && s.C == s.Cg * groups && s.O % groups == 0,
              "adder conv: channels do not match groups (C=", s.C, ", weight C/groups=", s.Cg,
              ", O=", s.O, ", groups=", groups, ")");
  TORCH_CHECK(s.sh >= 1 && s.sw >= 1 && s.dh >= 1 && s.dw >= 1 && s.ph >= 0 && s.pw >= 0,
              "adder conv: stride/dilation must be >= 1 and padding >= 0");
  s.Og = s.O / groups;
  s.Ho = (s.H + 2 * s.ph - s.dh * (s.kh - 1) - 1) / s.sh + 1;
  s.Wo = (s.Wd + 2 * s.pw - s.dw * (s.kw - 1) - 1) / s.sw + 1;
  TORCH_CHECK(s.Ho > 0 && s.Wo > 0, "adder conv: output would be empty");
  s.K = s.Cg * s.kh * s.kw;
  s.L = s.Ho * s.Wo;
  return s;
}

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Block sizing (tuning knobs, see set_blocking): floats per packed block, max positions per block.
std::atomic<int64_t> g_block_floats{131072};
std::atomic<int64_t> g_block_max{4096};

// Positions per block: the packed patch block (K x Pb floats) should stay within ~128 KiB.
int64_t block_width(int64_t K, int64_t limit) {
  const Kernels& k = K_();
  const int64_t tile = k.p_tile;
  const int64_t target = g_block_floats.load(), maxw = g_block_max.load();
  int64_t pb = std::max<int64_t>(tile, (target / std::max<int64_t>(K, 1)) / tile * tile);
  pb = std::min<int64_t>(pb, maxw);
  pb = std::min<int64_t>(pb, round_up(limit, k.lanes));
  return std::max<int64_t>(pb, k.lanes);
}

// ---------------------------------------------------------------------------------------------
// im2col of one block of output positions of one image and one group (generic, used by the
// integer shift kernel; the float kernels use the vectorised Kernels::im2col).
// dst[k * ldk + j * ldj] = x[c0 + c][h][w] for k = (c, u, v), position p0 + j (j < nb);
// `fill` outside the image.  Columns nb..npad-1 are set to `fill` too.
template <typename T>
void im2col_block(const T* xn, const Conv& s, int64_t c0, int64_t p0, int64_t nb, int64_t npad,
                  T* dst, int64_t ldk, int64_t ldj, T fill) {
  for (int64_t c = 0; c < s.Cg; ++c) {
    for (int64_t u = 0; u < s.kh; ++u) {
      for (int64_t v = 0; v < s.kw; ++v) {
        T* row = dst + ((c * s.kh + u) * s.kw + v) * ldk;
        int64_t j = 0, p = p0;
        while (j < nb) {
          const int64_t i = p / s.Wo, jj = p % s.Wo;
          const int64_t run = std::min(s.Wo - jj, nb - j);
          const int64_t h = i * s.sh + u * s.dh - s.ph;
          if (h < 0 || h >= s.H) {
            for (int64_t t = 0; t < run; ++t) row[(j + t) * ldj] = fill;
          } else {
            const T* src = xn + ((c0 + c) * s.H + h) * s.Wd;
            const int64_t off = v * s.dw - s.pw;  // w = (jj + t) * sw + off
            // valid t: 0 <= (jj+t)*sw + off < Wd
            int64_t t0 = 0, t1 = run;
            {
              const int64_t lo = -off - jj * s.sw;  // need t*sw >= lo
              if (lo > 0) t0 = std::min(run, (lo + s.sw - 1) / s.sw);
              const int64_t hi = s.Wd - off - jj * s.sw;  // need t*sw < hi
              t1 = hi <= 0 ? 0 : std::min(run, (hi + s.sw - 1) / s.sw);
              t1 = std::max(t1, t0);
            }
            for (int64_t t = 0; t < t0; ++t) row[(j + t) * ldj] = fill;
            if (ldj == 1 && s.sw == 1) {
              std::memcpy(row + j + t0, src + jj + off + t0, (t1 - t0) * sizeof(T));
            } else {
              for (int64_t t = t0; t < t1; ++t) row[(j + t) * ldj] = src[(jj + t) * s.sw + off];
            }
            for (int64_t t = t1; t < run; ++t) row[(j + t) * ldj] = fill;
          }
          j += run;
          p += run;
        }
        for (int64_t t = nb; t < npad; ++t) row[t * ldj] = fill;
      }
    }
  }
}

// Split [0, n) into one contiguous range per thread and run f(thread_index, begin, end).
template <typename F>
int64_t parallel_ranges(int64_t n, const F& f) {
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, T, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) f(t, n * t / T, n * (t + 1) / T);
  });
  return T;
}

// ---------------------------------------------------------------------------------------------
// Convolutions that are not "same" (stride > 1, no/other padding, ...) read their patches from
// phase planes: for every input channel c and phase (a, b) < (sh, sw) of the zero-padded image,
//   Q[c][a][b][ii][jq] = x[c][ii * sh + a - ph][jq * sw + b - pw]   (ii <= Hq, jq < Wq),
// and compute on a widened output grid of Ho x Wq positions (columns jq >= Wo are discarded).
// Tap (u, v) of position p' = i * Wq + jq is then Q[c][a][b] at p' + du * Wq + dv with
// a = u*dh % sh, du = u*dh / sh (same for v), so one block row of the patch matrix is a single
// contiguous copy. Planes are built per image and channel group, in cache.
struct Planes {
  int64_t Hq, Wq, Lw, per_channel;  // rows (plus one spare), row width, widened positions, floats per channel
  std::vector<int64_t> koff;        // offset of tap k (within the group's planes)
};

Planes make_planes(const Conv& s) {
  Planes q;
  const int64_t max_du = (s.kh - 1) * s.dh / s.sh, max_dv = (s.kw - 1) * s.dw / s.sw;
  q.Hq = s.Ho + max_du;
  q.Wq = s.Wo + max_dv;
  q.Lw = s.Ho * q.Wq;
  q.per_channel = s.sh * s.sw * (q.Hq + 1) * q.Wq;
  q.koff.resize(s.K);
  for (int64_t c = 0; c < s.Cg; ++c)
    for (int64_t u = 0; u < s.kh; ++u)
      for (int64_t v = 0; v < s.kw; ++v) {
        const int64_t a = u * s.dh % s.sh, du = u * s.dh / s.sh, b = v * s.dw % s.sw, dv = v * s.dw / s.sw;
        q.koff[(c * s.kh + u) * s.kw + v] = c * q.per_channel + ((a * s.sw + b) * (q.Hq + 1) + du) * q.Wq + dv;
      }
  return q;
}

// Q <- planes of channels c0..c0+Cg-1 of image xn
void build_planes(const Kernels& kn, const float* xn, const Conv& s, const Planes& q, int64_t c0, float* Q) {
  const int64_t rows = q.Hq + 1;
  if (s.sw == 2) {  // both column phases of a row at once: zero-padded row, then one de-interleave
    std::vector<float> tmp(2 * q.Wq + 2, 0.f);
    const int64_t lim = std::min<int64_t>(s.Wd, 2 * q.Wq - s.pw);  // source columns that land in the planes
    for (int64_t c = 0; c < s.Cg; ++c)
      for (int64_t a = 0; a < s.sh; ++a) {
        float* P0 = Q + c * q.per_channel + (a * 2 + 0) * rows * q.Wq;
        float* P1 = Q + c * q.per_channel + (a * 2 + 1) * rows * q.Wq;
        const float* xc = xn + (c0 + c) * s.H * s.Wd;
        for (int64_t ii = 0; ii < rows; ++ii) {
          const int64_t h = ii * s.sh + a - s.ph;
          if (h < 0 || h >= s.H) {
            std::memset(P0 + ii * q.Wq, 0, q.Wq * sizeof(float));
            std::memset(P1 + ii * q.Wq, 0, q.Wq * sizeof(float));
            continue;
          }
          // tmp[t] = x[h][t - pw] (0 outside), t < 2 Wq
          if (lim > 0) std::memcpy(tmp.data() + s.pw, xc + h * s.Wd, lim * sizeof(float));
          for (int64_t t = s.pw + std::max<int64_t>(lim, 0); t < 2 * q.Wq; ++t) tmp[t] = 0.f;
          kn.split2(tmp.data(), q.Wq, P0 + ii * q.Wq, P1 + ii * q.Wq);
        }
      }
    return;
  }
  for (int64_t c = 0; c < s.Cg; ++c)
    for (int64_t a = 0; a < s.sh; ++a)
      for (int64_t b = 0; b < s.sw; ++b) {
        float* P = Q + c * q.per_channel + (a * s.sw + b) * rows * q.Wq;
        const float* xc = xn + (c0 + c) * s.H * s.Wd;
        // valid jq: 0 <= jq * sw + b - pw < Wd
        const int64_t j0 = std::min(q.Wq, std::max<int64_t>(0, (s.pw - b + s.sw - 1) / s.sw));
        const int64_t j1 = std::max(j0, std::min(q.Wq, (s.Wd + s.pw - b + s.sw - 1) / s.sw));
        for (int64_t ii = 0; ii < rows; ++ii) {
          float* d = P + ii * q.Wq;
          const int64_t h = ii * s.sh + a - s.ph;
          if (h < 0 || h >= s.H) {
            std::memset(d, 0, q.Wq * sizeof(float));
            continue;
          }
          const float* sr = xc + h * s.Wd;
          for (int64_t jq = 0; jq < j0; ++jq) d[jq] = 0.f;
          if (s.sw == 1) {
            std::memcpy(d + j0, sr + j0 + b - s.pw, (j1 - j0) * sizeof(float));
          } else {
            for (int64_t jq = j0; jq < j1; ++jq) d[jq] = sr[jq * s.sw + b - s.pw];
          }
          for (int64_t jq = j1; jq < q.Wq; ++jq) d[jq] = 0.f;
        }
      }
}

// the adjoint of build_planes: dxn[c0 + c][h][w] += dQ[...]
void scatter_planes(float* dxn, const Conv& s, const Planes& q, int64_t c0, const float* dQ) {
  const int64_t rows = q.Hq + 1;
  for (int64_t c = 0; c < s.Cg; ++c)
    for (int64_t a = 0; a < s.sh; ++a)
      for (int64_t b = 0; b < s.sw; ++b) {
        const float* P = dQ + c * q.per_channel + (a * s.sw + b) * rows * q.Wq;
        float* xc = dxn + (c0 + c) * s.H * s.Wd;
        const int64_t j0 = std::min(q.Wq, std::max<int64_t>(0, (s.pw - b + s.sw - 1) / s.sw));
        const int64_t j1 = std::max(j0, std::min(q.Wq, (s.Wd + s.pw - b + s.sw - 1) / s.sw));
        for (int64_t ii = 0; ii < rows; ++ii) {
          const int64_t h = ii * s.sh + a - s.ph;
          if (h < 0 || h >= s.H) continue;
          float* dr = xc + h * s.Wd + b - s.pw;
          const float* sr = P + ii * q.Wq;
          for (int64_t jq = j0; jq < j1; ++jq) dr[jq * s.sw] += sr[jq];
        }
      }
}

// Xb[k][j] = Q[koff[k] + p0 + j] for j < nb, 0 for nb <= j < npad
void pack_from_planes(const float* Q, const Planes& q, int64_t K, int64_t p0, int64_t nb, int64_t npad, float* Xb,
                      int64_t ldk) {
  for (int64_t k = 0; k < K; ++k) {
    float* row = Xb + k * ldk;
    std::memcpy(row, Q + q.koff[k] + p0, nb * sizeof(float));
    for (int64_t j = nb; j < npad; ++j) row[j] = 0.f;
  }
}

// dYb[o][j] = dout[o][i][jq] for widened position p0 + j = i * Wq + jq (0 where jq >= Wo or j >= nb)
void pack_dout_widened(const float* dn, const Conv& s, const Planes& q, int64_t p0, int64_t nb, int64_t npad,
                       float* dYb, int64_t ldd) {
  for (int64_t o = 0; o < s.Og; ++o) {
    float* row = dYb + o * ldd;
    const float* src = dn + o * s.L;
    for (int64_t i = p0 / q.Wq; i * q.Wq < p0 + nb; ++i) {
      const int64_t r0 = std::max(p0, i * q.Wq), r1 = std::min(p0 + nb, (i + 1) * q.Wq);
      const int64_t mid = std::min(r1, i * q.Wq + s.Wo);
      if (r0 < mid) std::memcpy(row + (r0 - p0), src + i * s.Wo + (r0 - i * q.Wq), (mid - r0) * sizeof(float));
      for (int64_t p = std::max(r0, mid); p < r1; ++p) row[p - p0] = 0.f;
    }
    for (int64_t j = nb; j < npad; ++j) row[j] = 0.f;
  }
}

bool same_conv(const Conv& s) { return s.sh == 1 && s.sw == 1 && s.Wo == s.Wd; }

void check_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat,
              "shiftadd cpu kernels: ", what, " must be a float32 CPU tensor, got ", t.toString());
}

// ---------------------------------------------------------------------------------------------
// grouped matrix primitive: X (G, P, K), W (G, O, K), dY (G, P, O)

at::Tensor mm_forward(const at::Tensor& X_, const at::Tensor& W_, bool exact) {
  check_float(X_, "X");
  check_float(W_, "W");
  TORCH_CHECK(X_.dim() == 3 && W_.dim() == 3 && X_.size(0) == W_.size(0) && X_.size(2) == W_.size(2),
              "adder mm: expected X (G, P, K) and W (G, O, K), got ", X_.sizes(), " and ", W_.sizes());
  auto X = X_.contiguous();
  auto W = W_.contiguous();
  const int64_t G = X.size(0), P = X.size(1), K = X.size(2), O = W.size(1);
  auto Y = at::empty({G, P, O}, X.options());
  if (G * P * O == 0) return Y;
  if (K == 0) return Y.zero_();
  const Kernels& kn = K_();
  const int64_t Pb = block_width(K, P);
  const int64_t nblk = (P + Pb - 1) / Pb;
  auto Sw = W.sum(2).contiguous();
  const float* xp = X.data_ptr<float>();
  const float* wp = W.data_ptr<float>();
  const float* swp = Sw.data_ptr<float>();
  float* yp = Y.data_ptr<float>();
  at::parallel_for(0, G * nblk, 1, [&](int64_t b, int64_t e) {
    std::vector<float> Xb(K * Pb), Yb(O * Pb), scratch(Pb);
    for (int64_t t = b; t < e; ++t) {
      const int64_t g = t / nblk, p0 = (t % nblk) * Pb, nb = std::min(Pb, P - p0);
      const int64_t npad = round_up(nb, kn.lanes);
      const float* xg = xp + (g * P + p0) * K;
      kn.transpose(xg, K, nb, K, Xb.data(), Pb);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = nb; j < npad; ++j) Xb[k * Pb + j] = 0.f;
      kn.fwd_block(Xb.data(), Pb, K, npad / kn.lanes, wp + g * O * K, O, swp + g * O, Yb.data(), Pb,
                   scratch.data(), exact ? 1 : 0);
      float* yg = yp + (g * P + p0) * O;
      kn.transpose(Yb.data(), Pb, O, nb, yg, O);
    }
  });
  return Y;
}

void check_mm_grad(const at::Tensor& X, const at::Tensor& W, const at::Tensor& dY) {
  check_float(X, "X");
  check_float(W, "W");
  check_float(dY, "dY");
  TORCH_CHECK(X.dim() == 3 && W.dim() == 3 && dY.dim() == 3 && X.size(0) == W.size(0) &&
                  X.size(2) == W.size(2) && dY.size(0) == X.size(0) && dY.size(1) == X.size(1) &&
                  dY.size(2) == W.size(1),
              "adder mm backward: shapes do not match: X ", X.sizes(), ", W ", W.sizes(), ", dY ", dY.sizes());
}

at::Tensor mm_grad_input(const at::Tensor& X_, const at::Tensor& W_, const at::Tensor& dY_, int64_t mode) {
  check_mm_grad(X_, W_, dY_);
  TORCH_CHECK(mode == 0 || mode == 1, "mode must be 0 (full/HardTanh) or 1 (sign)");
  auto X = X_.contiguous();
  auto W = W_.contiguous();
  auto dY = dY_.contiguous();
  const int64_t G = X.size(0), P = X.size(1), K = X.size(2), O = W.size(1);
  auto dX = at::empty_like(X);
  if (G * P * K == 0) return dX;
  if (O == 0) return dX.zero_();
  const Kernels& kn = K_();
  const int64_t Pb = block_width(std::max(K, O), P);
  const int64_t nblk = (P + Pb - 1) / Pb;
  const float* xp = X.data_ptr<float>();
  const float* wp = W.data_ptr<float>();
  const float* dyp = dY.data_ptr<float>();
  float* dxp = dX.data_ptr<float>();
  at::parallel_for(0, G * nblk, 1, [&](int64_t b, int64_t e) {
    std::vector<float> Xb(K * Pb), dXb(K * Pb), dYb(O * Pb), scratch(Pb);
    for (int64_t t = b; t < e; ++t) {
      const int64_t g = t / nblk, p0 = (t % nblk) * Pb, nb = std::min(Pb, P - p0);
      const int64_t npad = round_up(nb, kn.lanes);
      const float* xg = xp + (g * P + p0) * K;
      const float* dg = dyp + (g * P + p0) * O;
      kn.transpose(xg, K, nb, K, Xb.data(), Pb);
      kn.transpose(dg, O, nb, O, dYb.data(), Pb);
      for (int64_t j = nb; j < npad; ++j) {
        for (int64_t k = 0; k < K; ++k) Xb[k * Pb + j] = 0.f;
        for (int64_t o = 0; o < O; ++o) dYb[o * Pb + j] = 0.f;
      }
      kn.gin_block(Xb.data(), Pb, K, npad / kn.lanes, wp + g * O * K, O, dYb.data(), Pb, dXb.data(), scratch.data(), (int)mode);
      float* dxg = dxp + (g * P + p0) * K;
      kn.transpose(dXb.data(), Pb, K, nb, dxg, K);
    }
  });
  return dX;
}

at::Tensor mm_grad_weight_sign(const at::Tensor& X_, const at::Tensor& W_, const at::Tensor& dY_) {
  check_mm_grad(X_, W_, dY_);
  auto X = X_.contiguous();
  auto W = W_.contiguous();
  auto dY = dY_.contiguous();
  const int64_t G = X.size(0), P = X.size(1), K = X.size(2), O = W.size(1);
  if (G * O * K == 0 || P == 0) return at::zeros_like(W);
  const Kernels& kn = K_();
  const int64_t Pb = block_width(std::max(K, O), P);
  const int64_t nblk = (P + Pb - 1) / Pb;
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), G * nblk));
  auto part = at::zeros({T, G, O, K}, W.options());
  const float* xp = X.data_ptr<float>();
  const float* wp = W.data_ptr<float>();
  const float* dyp = dY.data_ptr<float>();
  float* pp = part.data_ptr<float>();
  parallel_ranges(G * nblk, [&](int64_t tid, int64_t b, int64_t e) {
    std::vector<float> Xb(K * Pb), dYb(O * Pb);
    float* mine = pp + tid * G * O * K;
    for (int64_t t = b; t < e; ++t) {
      const int64_t g = t / nblk, p0 = (t % nblk) * Pb, nb = std::min(Pb, P - p0);
      const int64_t npad = round_up(nb, kn.lanes);
      const float* xg = xp + (g * P + p0) * K;
      const float* dg = dyp + (g * P + p0) * O;
      kn.transpose(xg, K, nb, K, Xb.data(), Pb);
      kn.transpose(dg, O, nb, O, dYb.data(), Pb);
      for (int64_t j = nb; j < npad; ++j) {
        for (int64_t k = 0; k < K; ++k) Xb[k * Pb + j] = 0.f;
        for (int64_t o = 0; o < O; ++o) dYb[o * Pb + j] = 0.f;
      }
      kn.gws_block(Xb.data(), Pb, K, npad / kn.lanes, wp + g * O * K, O, dYb.data(), Pb, mine + g * O * K);
    }
  });
  return part.sum(0);
}

// ---------------------------------------------------------------------------------------------
// fused convolution: x (N, C, H, W), w (O, C/G, kh, kw), out (N, O, Ho, Wo)

at::Tensor conv_forward(const at::Tensor& x_, const at::Tensor& w_, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool exact) {
  check_float(x_, "x");
  check_float(w_, "weight");
  const Conv s = conv_shape(x_, w_, stride, padding, dilation, groups);
  auto x = x_.contiguous();
  auto w = w_.contiguous();
  auto out = at::empty({s.N, s.O, s.Ho, s.Wo}, x.options());
  if (out.numel() == 0) return out;
  const Kernels& kn = K_();
  auto Sw = w.reshape({s.O, s.K}).sum(1).contiguous();
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* swp = Sw.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (same_conv(s)) {
    const int64_t Pb = block_width(s.K, s.L);
    const int64_t nblk = (s.L + Pb - 1) / Pb;
    at::parallel_for(0, s.N * s.G * nblk, 1, [&](int64_t b, int64_t e) {
      std::vector<float> Xb(s.K * Pb), Yb(s.Og * Pb), scratch(Pb);
      for (int64_t t = b; t < e; ++t) {
        const int64_t n = t / (s.G * nblk), g = (t / nblk) % s.G, p0 = (t % nblk) * Pb;
        const int64_t nb = std::min(Pb, s.L - p0), npad = round_up(nb, kn.lanes);
        kn.im2col(xp + n * s.C * s.H * s.Wd, s, g * s.Cg, p0, nb, npad, Xb.data(), Pb);
        kn.fwd_block(Xb.data(), Pb, s.K, npad / kn.lanes, wp + g * s.Og * s.K, s.Og, swp + g * s.Og,
                     Yb.data(), Pb, scratch.data(), exact ? 1 : 0);
        float* on = op + (n * s.O + g * s.Og) * s.L + p0;
        for (int64_t o = 0; o < s.Og; ++o) std::memcpy(on + o * s.L, Yb.data() + o * Pb, nb * sizeof(float));
      }
    });
    return out;
  }
  const Planes q = make_planes(s);
  const int64_t Pb = block_width(s.K, q.Lw);
  at::parallel_for(0, s.N * s.G, 1, [&](int64_t b, int64_t e) {
    std::vector<float> Q(s.Cg * q.per_channel), Xb(s.K * Pb), Yb(s.Og * Pb), scratch(Pb);
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / s.G, g = t % s.G;
      build_planes(kn, xp + n * s.C * s.H * s.Wd, s, q, g * s.Cg, Q.data());
      for (int64_t p0 = 0; p0 < q.Lw; p0 += Pb) {
        const int64_t nb = std::min(Pb, q.Lw - p0), npad = round_up(nb, kn.lanes);
        pack_from_planes(Q.data(), q, s.K, p0, nb, npad, Xb.data(), Pb);
        kn.fwd_block(Xb.data(), Pb, s.K, npad / kn.lanes, wp + g * s.Og * s.K, s.Og, swp + g * s.Og,
                     Yb.data(), Pb, scratch.data(), exact ? 1 : 0);
        float* on = op + (n * s.O + g * s.Og) * s.L;
        // widened positions p0.. -> output rows; columns jq >= Wo are dropped
        for (int64_t i = p0 / q.Wq; i * q.Wq < p0 + nb; ++i) {
          const int64_t a = std::max(p0, i * q.Wq), z = std::min(p0 + nb, i * q.Wq + s.Wo);
          if (a >= z) continue;
          for (int64_t o = 0; o < s.Og; ++o)
            std::memcpy(on + o * s.L + i * s.Wo + (a - i * q.Wq), Yb.data() + o * Pb + (a - p0),
                        (z - a) * sizeof(float));
        }
      }
    }
  });
  return out;
}

void check_conv_grad(const at::Tensor& x, const at::Tensor& w, const at::Tensor& dout, const Conv& s) {
  check_float(dout, "grad_output");
  TORCH_CHECK(dout.dim() == 4 && dout.size(0) == s.N && dout.size(1) == s.O && dout.size(2) == s.Ho &&
                  dout.size(3) == s.Wo,
              "adder conv backward: grad_output has shape ", dout.sizes(), ", expected (", s.N, ", ",
              s.O, ", ", s.Ho, ", ", s.Wo, ")");
}

// Backward of the fused convolution in one pass over the packed blocks: the input gradient
// (mode 0 HardTanh / 1 sign) if want_input, and the full-precision weight gradient (Eq. 5,
// dW = sum_p x dY - W sum_p dY) if want_weight, from the same patch and dY blocks.
std::tuple<at::Tensor, at::Tensor> conv_backward(const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& dout_,
                                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                                 at::IntArrayRef dilation, int64_t groups, int64_t mode,
                                                 bool want_input, bool want_weight) {
  check_float(x_, "x");
  check_float(w_, "weight");
  TORCH_CHECK(mode == 0 || mode == 1, "mode must be 0 (full/HardTanh) or 1 (sign)");
  const Conv s = conv_shape(x_, w_, stride, padding, dilation, groups);
  check_conv_grad(x_, w_, dout_, s);
  auto x = x_.contiguous();
  auto w = w_.contiguous();
  auto dout = dout_.contiguous();
  // a gradient that is not wanted comes back as an empty tensor
  at::Tensor dx = want_input ? at::zeros_like(x) : at::empty({0}, x.options());
  at::Tensor dw = want_weight ? at::zeros_like(w) : at::empty({0}, w.options());
  if (x.numel() == 0 || s.O == 0 || !(want_input || want_weight)) return {dx, dw};
  const Kernels& kn = K_();
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* dp = dout.data_ptr<float>();
  float* dxp = want_input ? dx.data_ptr<float>() : nullptr;
  const bool same = same_conv(s);
  const Planes q = same ? Planes{} : make_planes(s);
  const int64_t Lw = same ? s.L : q.Lw;
  const int64_t Pb = block_width(std::max(s.K, s.Og), Lw);
  const int64_t ntask = s.N * s.G;
  const int64_t T = want_weight ? std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntask)) : 1;
  const int64_t Kpad = round_up(s.K, kn.lanes);  // dW partials and transposed patches: k padded to vectors
  at::Tensor part = want_weight ? at::zeros({T, s.O, Kpad}, w.options()) : at::Tensor();
  float* pp = want_weight ? part.data_ptr<float>() : nullptr;
  // one task per (image, group): blocks of the same image overlap in dx, so they stay in one task
  parallel_ranges(ntask, [&](int64_t tid, int64_t b, int64_t e) {
    std::vector<float> Xb(s.K * Pb), dXb(want_input ? s.K * Pb : 0), dYb(s.Og * Pb), scratch(Pb);
    std::vector<float> Q(same ? 0 : s.Cg * q.per_channel), dQ(same || !want_input ? 0 : s.Cg * q.per_channel);
    std::vector<float> XT(want_weight ? Pb * Kpad : 0, 0.f);  // columns K..Kpad stay 0
    float* mine = want_weight ? pp + tid * s.O * Kpad : nullptr;
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / s.G, g = t % s.G;
      const float* xn = xp + n * s.C * s.H * s.Wd;
      const float* dn = dp + (n * s.O + g * s.Og) * s.L;
      if (!same) {
        build_planes(kn, xn, s, q, g * s.Cg, Q.data());
        std::fill(dQ.begin(), dQ.end(), 0.f);
      }
      for (int64_t p0 = 0; p0 < Lw; p0 += Pb) {
        const int64_t nb = std::min(Pb, Lw - p0), npad = round_up(nb, kn.lanes);
        if (same) {
          kn.im2col(xn, s, g * s.Cg, p0, nb, npad, Xb.data(), Pb);
          for (int64_t o = 0; o < s.Og; ++o) {
            std::memcpy(dYb.data() + o * Pb, dn + o * s.L + p0, nb * sizeof(float));
            for (int64_t j = nb; j < npad; ++j) dYb[o * Pb + j] = 0.f;
          }
        } else {
          pack_from_planes(Q.data(), q, s.K, p0, nb, npad, Xb.data(), Pb);
          pack_dout_widened(dn, s, q, p0, nb, npad, dYb.data(), Pb);
        }
        // padded and discarded positions have dY = 0, so they add nothing to dW
        if (want_weight) {
          kn.transpose(Xb.data(), Pb, s.K, nb, XT.data(), Kpad);
          kn.gwf_block(XT.data(), Kpad, Kpad / kn.lanes, nb, s.Og, dYb.data(), Pb, mine + g * s.Og * Kpad, Kpad);
        }
        if (!want_input) continue;
        kn.gin_block(Xb.data(), Pb, s.K, npad / kn.lanes, wp + g * s.Og * s.K, s.Og, dYb.data(), Pb,
                     dXb.data(), scratch.data(), (int)mode);
        if (same) {
          kn.col2im_add(dxp + n * s.C * s.H * s.Wd, s, g * s.Cg, p0, nb, dXb.data(), Pb);
        } else {
          // discarded columns have dY = 0, so their dX is exactly 0 and may be added anywhere
          for (int64_t k = 0; k < s.K; ++k) kn.add_to(dQ.data() + q.koff[k] + p0, dXb.data() + k * Pb, nb);
        }
      }
      if (!same && want_input) scatter_planes(dxp + n * s.C * s.H * s.Wd, s, q, g * s.Cg, dQ.data());
    }
  });
  if (want_weight) {
    auto sum_dy = dout.sum(at::IntArrayRef{0, 2, 3}).view({s.O, 1, 1, 1});
    dw = part.sum(0).narrow(1, 0, s.K).contiguous().view(w.sizes()).sub_(w.mul(sum_dy));
  }
  return {dx, dw};
}

at::Tensor conv_grad_input(const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& dout_,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           int64_t groups, int64_t mode) {
  return std::get<0>(conv_backward(x_, w_, dout_, stride, padding, dilation, groups, mode, true, false));
}

at::Tensor conv_grad_weight_sign(const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& dout_,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups) {
  check_float(x_, "x");
  check_float(w_, "weight");
  const Conv s = conv_shape(x_, w_, stride, padding, dilation, groups);
  check_conv_grad(x_, w_, dout_, s);
  auto x = x_.contiguous();
  auto w = w_.contiguous();
  auto dout = dout_.contiguous();
  if (w.numel() == 0 || s.N == 0) return at::zeros_like(w);
  const Kernels& kn = K_();
  const bool same = same_conv(s);
  const Planes q = same ? Planes{} : make_planes(s);
  const int64_t Lw = same ? s.L : q.Lw;
  const int64_t Pb = block_width(std::max(s.K, s.Og), Lw);
  const int64_t ntask = s.N * s.G;
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntask));
  auto part = at::zeros({T, s.O, s.K}, w.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* dp = dout.data_ptr<float>();
  float* pp = part.data_ptr<float>();
  parallel_ranges(ntask, [&](int64_t tid, int64_t b, int64_t e) {
    std::vector<float> Xb(s.K * Pb), dYb(s.Og * Pb), Q(same ? 0 : s.Cg * q.per_channel);
    float* mine = pp + tid * s.O * s.K;
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / s.G, g = t % s.G;
      const float* xn = xp + n * s.C * s.H * s.Wd;
      const float* dn = dp + (n * s.O + g * s.Og) * s.L;
      if (!same) build_planes(kn, xn, s, q, g * s.Cg, Q.data());
      for (int64_t p0 = 0; p0 < Lw; p0 += Pb) {
        const int64_t nb = std::min(Pb, Lw - p0), npad = round_up(nb, kn.lanes);
        if (same) {
          kn.im2col(xn, s, g * s.Cg, p0, nb, npad, Xb.data(), Pb);
          for (int64_t o = 0; o < s.Og; ++o) {
            std::memcpy(dYb.data() + o * Pb, dn + o * s.L + p0, nb * sizeof(float));
            for (int64_t j = nb; j < npad; ++j) dYb[o * Pb + j] = 0.f;
          }
        } else {
          pack_from_planes(Q.data(), q, s.K, p0, nb, npad, Xb.data(), Pb);
          pack_dout_widened(dn, s, q, p0, nb, npad, dYb.data(), Pb);
        }
        kn.gws_block(Xb.data(), Pb, s.K, npad / kn.lanes, wp + g * s.Og * s.K, s.Og, dYb.data(), Pb,
                     mine + g * s.Og * s.K);
      }
    }
  });
  return part.sum(0).view(w.sizes());
}

// ---------------------------------------------------------------------------------------------
// int8 adder with one shared scale: Y = -sum |qx - qw| (int32), via sum-of-absolute-differences
// on bytes biased by +128.  Patches are gathered from a zero-padded channels-last copy of the
// input, so the K order inside the kernel is (u, v, c).

// In-place transpose of an 8x8 byte matrix held as 8 little-endian 64-bit rows.
inline void transpose8x8(uint64_t* r) {
  for (int i = 0; i < 4; ++i) {
    const uint64_t t = ((r[i] >> 32) ^ r[i + 4]) & 0x00000000FFFFFFFFull;
    r[i] ^= t << 32;
    r[i + 4] ^= t;
  }
  for (int i : {0, 1, 4, 5}) {
    const uint64_t t = ((r[i] >> 16) ^ r[i + 2]) & 0x0000FFFF0000FFFFull;
    r[i] ^= t << 16;
    r[i + 2] ^= t;
  }
  for (int i : {0, 2, 4, 6}) {
    const uint64_t t = ((r[i] >> 8) ^ r[i + 1]) & 0x00FF00FF00FF00FFull;
    r[i] ^= t << 8;
    r[i + 1] ^= t;
  }
}

void check_int8(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kChar,
              "int8 adder: ", what, " must be an int8 CPU tensor, got ", t.toString());
}

at::Tensor sad_conv(const at::Tensor& qx_, const at::Tensor& qw_, at::IntArrayRef stride,
                    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_int8(qx_, "qx");
  check_int8(qw_, "qw");
  const Conv s = conv_shape(qx_, qw_, stride, padding, dilation, groups);
  auto out = at::empty({s.N, s.O, s.Ho, s.Wo}, qx_.options().dtype(at::kInt));
  if (out.numel() == 0) return out;
  const Kernels& kn = K_();
  const int64_t Kpad = round_up(std::max<int64_t>(s.K, 1), kn.sad_bytes);
  // zero-padded channels-last copy biased to uint8 (q ^ 0x80 == q + 128 for int8; q = 0 <-> 128),
  // one pass over the input; a channels_last input is read row by row.
  const int64_t Hp = s.H + 2 * s.ph, Wp = s.Wd + 2 * s.pw;
  auto xpad = at::empty({s.N, Hp, Wp, s.C}, qx_.options().dtype(at::kByte));
  {
    const int8_t* src = qx_.data_ptr<int8_t>();
    const int64_t sN = qx_.stride(0), sC = qx_.stride(1), sH = qx_.stride(2), sW = qx_.stride(3);
    uint8_t* dst = xpad.data_ptr<uint8_t>();
    at::parallel_for(0, s.N * Hp, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t n = t / Hp, hp = t % Hp, h = hp - s.ph;
        uint8_t* d = dst + t * Wp * s.C;
        if (h < 0 || h >= s.H) {
          std::memset(d, 128, Wp * s.C);
          continue;
        }
        std::memset(d, 128, s.pw * s.C);
        std::memset(d + (s.pw + s.Wd) * s.C, 128, s.pw * s.C);
        uint8_t* __restrict__ dr = d + s.pw * s.C;
        const int8_t* __restrict__ sr = src + n * sN + h * sH;
        const int64_t C = s.C, Wd = s.Wd, sC_ = sC, sW_ = sW;  // locals: byte stores may alias
        if (sC_ == 1) {
          for (int64_t w = 0; w < Wd; ++w)
            for (int64_t c = 0; c < C; ++c) dr[w * C + c] = (uint8_t)(sr[w * sW_ + c] ^ 0x80);
        } else if (sW_ == 1 && C % 8 == 0) {
          // NCHW -> NHWC 8 channels x 8 pixels at a time: 8x8 byte transpose in 64-bit words
          const int64_t W8 = Wd / 8 * 8;
          for (int64_t c0 = 0; c0 < C; c0 += 8) {
            for (int64_t w0 = 0; w0 < W8; w0 += 8) {
              uint64_t r[8];
              for (int q = 0; q < 8; ++q) std::memcpy(&r[q], sr + (c0 + q) * sC_ + w0, 8);
              transpose8x8(r);
              for (int q = 0; q < 8; ++q) {
                const uint64_t v = r[q] ^ 0x8080808080808080ull;
                std::memcpy(dr + (w0 + q) * C + c0, &v, 8);
              }
            }
            for (int64_t c = c0; c < c0 + 8; ++c)
              for (int64_t w = W8; w < Wd; ++w) dr[w * C + c] = (uint8_t)(sr[c * sC_ + w] ^ 0x80);
          }
        } else {
          for (int64_t c = 0; c < C; ++c)
            for (int64_t w = 0; w < Wd; ++w) dr[w * C + c] = (uint8_t)(sr[c * sC_ + w * sW_] ^ 0x80);
        }
      }
    });
  }
  // weights, K order (u, v, c) like the patches, biased, packed [G][Kpad/8][Opad][8]
  const int64_t Opad = round_up(s.Og, 8);
  auto wb = at::full({s.G, Kpad / 8, Opad, 8}, 128, xpad.options());
  {
    auto qw = qw_.contiguous();
    const int8_t* wsrc = qw.data_ptr<int8_t>();
    uint8_t* wd = wb.data_ptr<uint8_t>();
    for (int64_t o = 0; o < s.O; ++o) {
      const int64_t g = o / s.Og, og = o % s.Og;
      for (int64_t c = 0; c < s.Cg; ++c)
        for (int64_t u = 0; u < s.kh; ++u)
          for (int64_t v = 0; v < s.kw; ++v) {
            const int64_t k = (u * s.kw + v) * s.Cg + c;
            wd[((g * (Kpad / 8) + k / 8) * Opad + og) * 8 + k % 8] =
                (uint8_t)(wsrc[((o * s.Cg + c) * s.kh + u) * s.kw + v] ^ 0x80);
          }
    }
  }
  const uint8_t* xq = xpad.data_ptr<uint8_t>();
  const uint8_t* wq = wb.data_ptr<uint8_t>();
  int32_t* op = out.data_ptr<int32_t>();
  const int64_t Pb = 96;
  const int64_t nblk = (s.L + Pb - 1) / Pb;
  const int64_t nk8 = Kpad / 8;
  // Direct mode: with C/G % 8 == 0 every 8-byte chunk of a patch is 8 consecutive channels of one
  // pixel of the padded image, so the kernel reads the image itself through an offset table.
  const bool direct = (s.Cg % 8 == 0);
  std::vector<int64_t> koff(nk8);
  for (int64_t kc = 0; kc < nk8; ++kc) {
    if (direct) {
      const int64_t k = kc * 8, uv = k / s.Cg, c = k % s.Cg, u = uv / s.kw, v = uv % s.kw;
      koff[kc] = ((u * s.dh) * Wp + v * s.dw) * s.C + c;
    } else {
      koff[kc] = kc * 8;
    }
  }
  const bool merge_v = (s.dw == 1 && s.G == 1);  // a patch row (u) is one contiguous kw*C run
  at::parallel_for(0, s.N * s.G * nblk, 1, [&](int64_t b, int64_t e) {
    std::vector<uint8_t> Xb(direct ? 0 : Pb * Kpad, (uint8_t)128);
    std::vector<int32_t> Yb(Pb * Opad);
    std::vector<const uint8_t*> rows(Pb);
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / (s.G * nblk), g = (t / nblk) % s.G, p0 = (t % nblk) * Pb;
      const int64_t nb = std::min(Pb, s.L - p0);
      const uint8_t* xn = xq + n * Hp * Wp * s.C;
      // locals, not struct fields: byte stores may alias anything, so fields would be reloaded
      const int64_t C = s.C, Cg = s.Cg, kh = s.kh, kw = s.kw, sh = s.sh, sw = s.sw, dh = s.dh, dw = s.dw;
      const int64_t Wo = s.Wo, run = kw * Cg, goff = g * Cg;
      int64_t i = p0 / Wo, jj = p0 % Wo;
      for (int64_t j = 0; j < nb; ++j) {
        const uint8_t* pix = xn + ((i * sh) * Wp + jj * sw) * C + goff;  // top-left tap of the patch
        if (direct) {
          rows[j] = pix;
        } else {
          uint8_t* __restrict__ row = Xb.data() + j * Kpad;
          rows[j] = row;
          for (int64_t u = 0; u < kh; ++u) {
            const uint8_t* __restrict__ src = pix + (u * dh) * Wp * C;
            if (merge_v) {
              uint8_t* __restrict__ d = row + u * run;
              for (int64_t q = 0; q < run; ++q) d[q] = src[q];
            } else {
              for (int64_t v = 0; v < kw; ++v) {
                uint8_t* __restrict__ d = row + (u * kw + v) * Cg;
                const uint8_t* __restrict__ sv = src + v * dw * C;
                for (int64_t q = 0; q < Cg; ++q) d[q] = sv[q];
              }
            }
          }
        }
        if (++jj == Wo) {
          jj = 0;
          ++i;
        }
      }
      kn.sad_block(rows.data(), nb, koff.data(), nk8, wq + g * nk8 * Opad * 8, s.Og, Yb.data(), Opad);
      int32_t* on = op + (n * s.O + g * s.Og) * s.L + p0;
      const int64_t L = s.L, Og = s.Og;
      for (int64_t o = 0; o < Og; ++o)
        for (int64_t j = 0; j < nb; ++j) on[o * L + j] = Yb[j * Opad + o];
    }
  });
  return out;
}

at::Tensor sad_mm(const at::Tensor& qX_, const at::Tensor& qW_) {
  check_int8(qX_, "qX");
  check_int8(qW_, "qW");
  TORCH_CHECK(qX_.dim() == 3 && qW_.dim() == 3 && qX_.size(0) == qW_.size(0) && qX_.size(2) == qW_.size(2),
              "int8 adder mm: expected qX (G, P, K) and qW (G, O, K), got ", qX_.sizes(), " and ", qW_.sizes());
  const int64_t G = qX_.size(0), P = qX_.size(1), K = qX_.size(2), O = qW_.size(1);
  auto Y = at::empty({G, P, O}, qX_.options().dtype(at::kInt));
  if (Y.numel() == 0) return Y;
  const Kernels& kn = K_();
  const int64_t Kpad = round_up(std::max<int64_t>(K, 1), kn.sad_bytes);
  const int64_t Opad = round_up(O, 8);
  auto xb = at::full({G, P, Kpad}, 128, qX_.options().dtype(at::kByte));
  xb.narrow(2, 0, K).copy_(qX_.to(at::kShort).add(128).to(at::kByte));
  // W biased and packed [G][Kpad/8][Opad][8]
  auto wfull = at::full({G, Opad, Kpad}, 128, xb.options());
  wfull.narrow(1, 0, O).narrow(2, 0, K).copy_(qW_.to(at::kShort).add(128).to(at::kByte));
  auto wb = wfull.view({G, Opad, Kpad / 8, 8}).permute({0, 2, 1, 3}).contiguous();
  const uint8_t* xq = xb.data_ptr<uint8_t>();
  const uint8_t* wq = wb.data_ptr<uint8_t>();
  int32_t* yp = Y.data_ptr<int32_t>();
  const int64_t Pb = 96, nblk = (P + Pb - 1) / Pb, nk8 = Kpad / 8;
  std::vector<int64_t> koff(nk8);
  for (int64_t kc = 0; kc < nk8; ++kc) koff[kc] = kc * 8;
  at::parallel_for(0, G * nblk, 1, [&](int64_t b, int64_t e) {
    std::vector<const uint8_t*> rows(Pb);
    for (int64_t t = b; t < e; ++t) {
      const int64_t g = t / nblk, p0 = (t % nblk) * Pb, nb = std::min(Pb, P - p0);
      for (int64_t j = 0; j < nb; ++j) rows[j] = xq + (g * P + p0 + j) * Kpad;
      kn.sad_block(rows.data(), nb, koff.data(), nk8, wq + g * Kpad * Opad, O, yp + (g * P + p0) * O, O);
    }
  });
  return Y;
}

// ---------------------------------------------------------------------------------------------
// power-of-two weights on integer activations: Y = sum sign * (qx << shift), int32.
// shift: int32 (O, C/G, kh, kw) in [0, 30]; sign: int8/int32 same shape in {-1, 0, 1}.
// The caller guarantees no int32 overflow (see shiftadd/kernels/integer.py).

at::Tensor shift_conv(const at::Tensor& qx_, const at::Tensor& shift_, const at::Tensor& sign_,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                      int64_t groups) {
  TORCH_CHECK(qx_.device().is_cpu() && qx_.scalar_type() == at::kInt, "integer shift conv: qx must be an int32 CPU tensor");
  TORCH_CHECK(shift_.sizes() == sign_.sizes(), "integer shift conv: shift and sign shapes differ");
  const Conv s = conv_shape(qx_, shift_, stride, padding, dilation, groups);
  auto qx = qx_.contiguous();
  auto sh = shift_.to(at::kInt).reshape({s.O, s.K});
  auto sg = sign_.to(at::kInt).reshape({s.O, s.K});
  TORCH_CHECK(sh.min().item<int32_t>() >= 0 && sh.max().item<int32_t>() <= 30, "integer shift conv: shifts must lie in [0, 30]");
  TORCH_CHECK(sg.abs().max().item<int32_t>() <= 1, "integer shift conv: signs must be -1, 0 or 1");
  const Kernels& kn = K_();
  const int64_t ldo = round_up(std::max<int64_t>(s.Og, 1), 16);
  // Sh/Ng [G][K][ldo]: zero weights shift by 32 (-> 0), negative ones flip bits (+1 in nneg)
  auto Sh = at::full({s.G, s.K, ldo}, 32, sh.options());
  auto Ng = at::zeros({s.G, s.K, ldo}, sh.options());
  auto nneg = at::zeros({s.G, ldo}, sh.options());
  {
    auto sh3 = sh.view({s.G, s.Og, s.K}).permute({0, 2, 1});
    auto sg3 = sg.view({s.G, s.Og, s.K}).permute({0, 2, 1});
    Sh.narrow(2, 0, s.Og).copy_(at::where(sg3.eq(0), at::full({}, 32, sh.options()), sh3));
    Ng.narrow(2, 0, s.Og).copy_(at::where(sg3.lt(0), at::full({}, -1, sh.options()), at::zeros({}, sh.options())));
    nneg.narrow(1, 0, s.Og).copy_(sg.view({s.G, s.Og, s.K}).lt(0).sum(2).to(at::kInt));
  }
  auto out = at::empty({s.N, s.O, s.Ho, s.Wo}, qx.options());
  if (out.numel() == 0) return out;
  const int32_t* xp = qx.data_ptr<int32_t>();
  const int32_t* shp = Sh.data_ptr<int32_t>();
  const int32_t* ngp = Ng.data_ptr<int32_t>();
  const int32_t* nnp = nneg.data_ptr<int32_t>();
  int32_t* op = out.data_ptr<int32_t>();
  const int64_t Pb = 64, nblk = (s.L + Pb - 1) / Pb;
  at::parallel_for(0, s.N * s.G * nblk, 1, [&](int64_t b, int64_t e) {
    std::vector<int32_t> Xb(Pb * std::max<int64_t>(s.K, 1));
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / (s.G * nblk), g = (t / nblk) % s.G, p0 = (t % nblk) * Pb;
      const int64_t nb = std::min(Pb, s.L - p0);
      im2col_block<int32_t>(xp + n * s.C * s.H * s.Wd, s, g * s.Cg, p0, nb, nb, Xb.data(), 1, s.K, 0);
      kn.shift_block(Xb.data(), nb, s.K, shp + g * s.K * ldo, ngp + g * s.K * ldo, s.Og, ldo,
                     nnp + g * ldo, op + (n * s.O + g * s.Og) * s.L + p0, 1, s.L);
    }
  });
  return out;
}

// The same with int64 accumulation (used when int32 could overflow); plain scalar loops.
at::Tensor shift_conv64(const at::Tensor& qx_, const at::Tensor& shift_, const at::Tensor& sign_,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        int64_t groups) {
  TORCH_CHECK(qx_.device().is_cpu() && qx_.scalar_type() == at::kInt, "integer shift conv: qx must be an int32 CPU tensor");
  TORCH_CHECK(shift_.sizes() == sign_.sizes(), "integer shift conv: shift and sign shapes differ");
  const Conv s = conv_shape(qx_, shift_, stride, padding, dilation, groups);
  auto qx = qx_.contiguous();
  auto sh = shift_.to(at::kInt).reshape({s.O, s.K}).contiguous();
  auto sg = sign_.to(at::kInt).reshape({s.O, s.K}).contiguous();
  TORCH_CHECK(sh.min().item<int32_t>() >= 0 && sh.max().item<int32_t>() <= 30, "integer shift conv: shifts must lie in [0, 30]");
  TORCH_CHECK(sg.abs().max().item<int32_t>() <= 1, "integer shift conv: signs must be -1, 0 or 1");
  auto out = at::empty({s.N, s.O, s.Ho, s.Wo}, qx.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  const int32_t* xp = qx.data_ptr<int32_t>();
  const int32_t* shp = sh.data_ptr<int32_t>();
  const int32_t* sgp = sg.data_ptr<int32_t>();
  int64_t* op = out.data_ptr<int64_t>();
  const int64_t Pb = 64, nblk = (s.L + Pb - 1) / Pb;
  at::parallel_for(0, s.N * s.G * nblk, 1, [&](int64_t b, int64_t e) {
    std::vector<int32_t> Xb(Pb * std::max<int64_t>(s.K, 1));
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / (s.G * nblk), g = (t / nblk) % s.G, p0 = (t % nblk) * Pb;
      const int64_t nb = std::min(Pb, s.L - p0);
      im2col_block<int32_t>(xp + n * s.C * s.H * s.Wd, s, g * s.Cg, p0, nb, nb, Xb.data(), 1, s.K, 0);
      for (int64_t o = 0; o < s.Og; ++o) {
        const int32_t* so = shp + (g * s.Og + o) * s.K;
        const int32_t* go = sgp + (g * s.Og + o) * s.K;
        int64_t* dst = op + (n * s.O + g * s.Og + o) * s.L + p0;
        for (int64_t j = 0; j < nb; ++j) {
          const int32_t* xr = Xb.data() + j * s.K;
          int64_t acc = 0;
          for (int64_t k = 0; k < s.K; ++k) {
            const int64_t v = (int64_t)((uint64_t)(int64_t)xr[k] << so[k]);
            acc += go[k] > 0 ? v : (go[k] < 0 ? -v : 0);
          }
          dst[j] = acc;
        }
      }
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------

std::string isa() { return std::string(K_().name); }

void set_blocking(int64_t block_floats, int64_t block_max) {
  TORCH_CHECK(block_floats >= 1024 && block_max >= 64, "set_blocking: block_floats >= 1024, block_max >= 64");
  g_block_floats.store(block_floats);
  g_block_max.store(block_max);
}

void set_isa(std::string name) {
  const Kernels* k = kernels_by_name(name);
  TORCH_CHECK(k != nullptr, "instruction set '", name, "' is not available on this CPU/build");
  g_kernels.store(k);
}

}  // namespace
}  // namespace shiftadd_cpu

TORCH_LIBRARY(shiftadd_cpu, m) {
  using namespace shiftadd_cpu;
  m.def("isa", &isa);                        // instruction set in use
  m.def("supported_isas", &supported_isas);  // usable on this CPU/build, best first
  m.def("set_isa", &set_isa);                // force one (testing)
  m.def("set_blocking", &set_blocking);      // block sizes (tuning)
  m.def("mm_forward", &mm_forward);          // Y = -sum|X - W| on (G,P,K) x (G,O,K)
  m.def("mm_grad_input", &mm_grad_input);    // mode 0: HardTanh, 1: sign
  m.def("mm_grad_weight_sign", &mm_grad_weight_sign);
  m.def("conv_forward", &conv_forward);      // fused adder conv2d
  m.def("conv_grad_input", &conv_grad_input);
  m.def("conv_backward", &conv_backward);    // (dx if want_input, full-precision dW if want_weight)
  m.def("conv_grad_weight_sign", &conv_grad_weight_sign);
  m.def("sad_conv", &sad_conv);              // int8 adder conv2d -> int32
  m.def("sad_mm", &sad_mm);                  // int8 adder (G,P,K) x (G,O,K) -> int32
  m.def("shift_conv", &shift_conv);          // integer power-of-two conv2d -> int32
  m.def("shift_conv64", &shift_conv64);      // the same, int64 accumulation
}
