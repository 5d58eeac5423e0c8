// AVX2 + FMA build of the block kernels; selected at run time when the CPU has it.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "isa.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && !defined(SHIFTADD_NO_AVX2)
#include <immintrin.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace shiftadd_cpu {
namespace avx2 {

struct V {
  static constexpr int W = 8;
  using T = __m256;
  static inline T zero() { return _mm256_setzero_ps(); }
  static inline T load(const float* p) { return _mm256_loadu_ps(p); }
  static inline void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static inline T set1(float f) { return _mm256_set1_ps(f); }
  static inline T add(T a, T b) { return _mm256_add_ps(a, b); }
  static inline T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static inline T max(T a, T b) { return _mm256_max_ps(a, b); }
  static inline T min(T a, T b) { return _mm256_min_ps(a, b); }
  // |a| by clearing the sign bit (andnot with -0.0f)
  static inline T abs(T a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static inline T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static inline T fnmadd(T a, T b, T c) { return _mm256_fnmadd_ps(a, b, c); }
  static inline T accum(T acc, T t) { return _mm256_fmadd_ps(t, _mm256_set1_ps(1.0f), acc); }
  // acc + sign(t) * d: d with t's sign bit flipped in, zeroed where t == +-0
  static inline T sign_mul(T t, T d, T acc) {
    const T sgn = _mm256_set1_ps(-0.0f);
    const T r = _mm256_xor_ps(d, _mm256_and_ps(t, sgn));
    const T nz = _mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_NEQ_UQ);
    return _mm256_add_ps(acc, _mm256_and_ps(r, nz));
  }
  static constexpr bool kGinSplit = false;  // no one-op clamp: formula (a) everywhere
  static inline T fsub(T a, T b) { return _mm256_sub_ps(a, b); }
  static inline T clamp1(T t) { return _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-1.0f)), _mm256_set1_ps(1.0f)); }
  static constexpr bool kSplit2 = false;
  static inline int64_t split2(const float*, int64_t, float*, float*) { return 0; }
  static constexpr bool kTranspose8 = true;
  static inline void transpose8(const float* s, int64_t ls, float* d, int64_t ld) {
    const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ls), r2 = _mm256_loadu_ps(s + 2 * ls),
                 r3 = _mm256_loadu_ps(s + 3 * ls), r4 = _mm256_loadu_ps(s + 4 * ls), r5 = _mm256_loadu_ps(s + 5 * ls),
                 r6 = _mm256_loadu_ps(s + 6 * ls), r7 = _mm256_loadu_ps(s + 7 * ls);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
                 t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
                 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
                 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
                 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ld, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ld, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ld, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ld, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ld, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ld, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ld, _mm256_permute2f128_ps(u3, u7, 0x31));
  }
  static inline float hsum(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 h = _mm_movehdup_ps(s);
    s = _mm_add_ps(s, h);
    h = _mm_movehl_ps(h, s);
    s = _mm_add_ss(s, h);
    return _mm_cvtss_f32(s);
  }
};

struct VI {
  static constexpr int OW = 4;
  using T = __m256i;
  static inline T zero() { return _mm256_setzero_si256(); }
  static inline T load(const uint8_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
  static inline T bcast8(const uint8_t* p) {
    int64_t v;
    std::memcpy(&v, p, 8);
    return _mm256_set1_epi64x(v);
  }
  static inline T sad(T a, T b) { return _mm256_sad_epu8(a, b); }
  static inline T add(T a, T b) { return _mm256_add_epi64(a, b); }
  static inline void store_neg(int32_t* y, T acc, int64_t n) {
    alignas(32) int64_t t[4];
    _mm256_store_si256((__m256i*)t, acc);
    for (int64_t l = 0; l < n && l < 4; ++l) y[l] = -(int32_t)t[l];
  }
};

struct VS {
  static constexpr int W = 8;
  using T = __m256i;
  static inline T load(const int32_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
  static inline void store(int32_t* p, T v) { _mm256_storeu_si256((__m256i*)p, v); }
  static inline T set1(int32_t x) { return _mm256_set1_epi32(x); }
  static inline T add(T a, T b) { return _mm256_add_epi32(a, b); }
  static inline T bxor(T a, T b) { return _mm256_xor_si256(a, b); }
  static inline T sllv(T a, T s) { return _mm256_sllv_epi32(a, s); }
};

constexpr int FWD_MR = 4, FWD_NR = 2;
constexpr int64_t FWD_KC = 128;
constexpr int GIN_MR = 2, GIN_NR = 2;
constexpr int GWS_MR = 2, GWS_NR = 2;
constexpr int GWF_MR = 2, GWF_NR = 4;
constexpr int SAD_MR = 4, SAD_NR = 2;
constexpr int SH_MR = 3, SH_NR = 2;
#define ISA_NAME "avx2"
#include "kernels.inc"
#undef ISA_NAME

}  // namespace avx2
}  // namespace shiftadd_cpu

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace shiftadd_cpu {
const Kernels* kernels_avx2() { return &avx2::kTable; }
}  // namespace shiftadd_cpu

#else
namespace shiftadd_cpu {
const Kernels* kernels_avx2() { return nullptr; }
}  // namespace shiftadd_cpu
#endif
