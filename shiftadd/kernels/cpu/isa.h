// Per-instruction-set kernel tables for the shiftadd CPU extension.
//
// The block kernels work on small packed buffers that live in cache; packing, threading and
// the PyTorch glue live in adder.cpp.  Each instruction set (AVX-512, AVX2, portable scalar)
// is compiled in its own translation unit under `#pragma GCC target`, and this header is the
// only thing those units share with adder.cpp, so no PyTorch header is ever compiled with
// instructions the running CPU may lack.
#pragma once
#include <cstdint>

namespace shiftadd_cpu {

// Geometry of one convolution (per group: Cg input channels, K = Cg*kh*kw, L = Ho*Wo).
struct ConvGeom {
  int64_t N, C, H, Wd, O, G, Cg, Og, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, K, L;
};

// Layout conventions of the float block kernels (Pb = block width, a multiple of `lanes`):
//   Xb  [K][ldx]  patches, position-contiguous (ldx >= Pb)
//   Wm  [O][K]    filters
//   Yb  [O][ldy]  outputs          dYb [O][ldd] output gradients     dXb [K][ldx] input gradients
struct Kernels {
  const char* name;
  int lanes;     // floats per vector
  int p_tile;    // positions per register tile of the forward kernel (a multiple of lanes)
  int sad_bytes; // K padding multiple of the int8 SAD kernel (8)

  // Yb[o][p] = -sum_k |Xb[k][p] - Wm[o][k]|  for p < Pv*lanes. Sw[o] = sum_k Wm[o][k];
  // scratch holds Pv*lanes floats. exact=0 uses |a-b| = 2max(a,b)-a-b (2 ops instead of 3).
  void (*fwd_block)(const float* Xb, int64_t ldx, int64_t K, int64_t Pv, const float* Wm,
                    int64_t O, const float* Sw, float* Yb, int64_t ldy, float* scratch, int exact);
  // dXb[k][p] = sum_o f(Wm[o][k] - Xb[k][p]) * dYb[o][p], f = clamp(.,-1,1) (mode 0) or sign (1);
  // scratch holds Pv*lanes floats.
  void (*gin_block)(const float* Xb, int64_t ldx, int64_t K, int64_t Pv, const float* Wm,
                    int64_t O, const float* dYb, int64_t ldd, float* dXb, float* scratch, int mode);
  // dW[o][k] += sum_p sign(Xb[k][p] - Wm[o][k]) * dYb[o][p]
  void (*gws_block)(const float* Xb, int64_t ldx, int64_t K, int64_t Pv, const float* Wm,
                    int64_t O, const float* dYb, int64_t ldd, float* dW);
  // dW[o][k] += sum_{p < P} XT[p][k] * dYb[o][p] for k < Kv*lanes  (the X dY^T part of the
  // full-precision weight gradient); XT is [P][ldt], dW is [O][ldw], ldt and ldw multiples of lanes.
  void (*gwf_block)(const float* XT, int64_t ldt, int64_t Kv, int64_t P, int64_t O, const float* dYb,
                    int64_t ldd, float* dW, int64_t ldw);
  // Y[p*ysp + o] = -sum_k |x_p[k] - W[o][k]| on uint8 bytes biased by +128, where the 8-byte
  // chunk kc of patch p is xrows[p] + koff[kc] (kc < nk8), and Wb is packed [nk8][Opad][8] with
  // Opad = O rounded up to 8 (padding bytes equal in patches and W).
  void (*sad_block)(const uint8_t* const* xrows, int64_t P, const int64_t* koff, int64_t nk8,
                    const uint8_t* Wb, int64_t O, int32_t* Y, int64_t ysp);
  // Y[p*ysp + o*yso] = nneg[o] + sum_k ((Xb[p][k] << Sh[k][o]) ^ Ng[k][o]), int32 arithmetic,
  // Sh/Ng are [K][ldo] with ldo a multiple of 8 (shift 32 = zero weight; Ng = -1 for negative).
  void (*shift_block)(const int32_t* Xb, int64_t P, int64_t K, const int32_t* Sh,
                      const int32_t* Ng, int64_t O, int64_t ldo, const int32_t* nneg, int32_t* Y,
                      int64_t ysp, int64_t yso);
  // im2col of positions p0..p0+nb-1 of image xn (channels c0..c0+Cg-1) into dst[k * ldk + j],
  // zero outside the image and for nb <= j < npad. Only for "same" convolutions (stride 1,
  // Wo == W); see adder.cpp for the others.
  void (*im2col)(const float* xn, const ConvGeom& s, int64_t c0, int64_t p0, int64_t nb,
                 int64_t npad, float* dst, int64_t ldk);
  // dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols (blocked 8x8 transposes)
  void (*transpose)(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd);
  // the adjoint: dxn[c0 + c][h][w] += src[k * ldk + j]  (src is scratch: it may be modified)
  void (*col2im_add)(float* dxn, const ConvGeom& s, int64_t c0, int64_t p0, int64_t nb,
                     float* src, int64_t ldk);
  void (*add_to)(float* dst, const float* src, int64_t n);  // dst[t] += src[t]
  void (*split2)(const float* src, int64_t n, float* even, float* odd);  // even[j] = src[2j], odd[j] = src[2j+1]
};

const Kernels* kernels_scalar();
const Kernels* kernels_avx2();    // nullptr where not compiled in
const Kernels* kernels_avx512();  // nullptr where not compiled in

}  // namespace shiftadd_cpu
