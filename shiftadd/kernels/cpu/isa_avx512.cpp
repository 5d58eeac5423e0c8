// AVX-512 (F, BW, VL, DQ) build of the block kernels; selected at run time when the CPU has it.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "isa.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && !defined(SHIFTADD_NO_AVX512)
#include <immintrin.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#endif

namespace shiftadd_cpu {
namespace avx512 {

struct V {
  static constexpr int W = 16;
  using T = __m512;
  static inline T zero() { return _mm512_setzero_ps(); }
  static inline T load(const float* p) { return _mm512_loadu_ps(p); }
  static inline void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static inline T set1(float f) { return _mm512_set1_ps(f); }
  static inline T add(T a, T b) { return _mm512_add_ps(a, b); }
  static inline T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static inline T max(T a, T b) { return _mm512_max_ps(a, b); }
  static inline T min(T a, T b) { return _mm512_min_ps(a, b); }
  static inline T abs(T a) { return _mm512_abs_ps(a); }
  static inline T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static inline T fnmadd(T a, T b, T c) { return _mm512_fnmadd_ps(a, b, c); }
  // acc + t on the FMA pipes (add/max/min share the other two pipes on AMD Zen)
  static inline T accum(T acc, T t) { return _mm512_fmadd_ps(t, _mm512_set1_ps(1.0f), acc); }
  // acc + sign(t) * d: d with t's sign bit xor-ed in (ternary logic), skipped where t == +-0
  static inline T sign_mul(T t, T d, T acc) {
    const __m512i ti = _mm512_castps_si512(t);
    const __mmask16 nz = _mm512_test_epi32_mask(ti, _mm512_set1_epi32(0x7fffffff));
    const __m512i r = _mm512_ternarylogic_epi32(_mm512_castps_si512(d), ti, _mm512_set1_epi32((int)0x80000000u), 0x78);
    return _mm512_mask3_fmadd_ps(_mm512_castsi512_ps(r), _mm512_set1_ps(1.0f), acc, nz);
  }
  static constexpr bool kGinSplit = true;
  static inline T fsub(T a, T b) { return _mm512_fmsub_ps(a, _mm512_set1_ps(1.0f), b); }
  // vrangeps, imm 0b0010 (select the smaller magnitude, sign of the first operand): clamp(t, -1, 1)
  static inline T clamp1(T t) { return _mm512_range_ps(t, _mm512_set1_ps(1.0f), 0x2); }
  static constexpr bool kSplit2 = true;
  // de-interleave 16 pairs at a time; returns how many outputs were written
  static inline int64_t split2(const float* s, int64_t n, float* e, float* o) {
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      const __m512 a = _mm512_loadu_ps(s + 2 * j), b = _mm512_loadu_ps(s + 2 * j + 16);
      _mm512_storeu_ps(e + j, _mm512_permutex2var_ps(a, ie, b));
      _mm512_storeu_ps(o + j, _mm512_permutex2var_ps(a, io, b));
    }
    return j;
  }
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
  static inline float hsum(T v) { return _mm512_reduce_add_ps(v); }
};

struct VI {
  static constexpr int OW = 8;
  using T = __m512i;
  static inline T zero() { return _mm512_setzero_si512(); }
  static inline T load(const uint8_t* p) { return _mm512_loadu_si512((const void*)p); }
  static inline T bcast8(const uint8_t* p) {
    int64_t v;
    std::memcpy(&v, p, 8);
    return _mm512_set1_epi64(v);
  }
  static inline T sad(T a, T b) { return _mm512_sad_epu8(a, b); }
  static inline T add(T a, T b) { return _mm512_add_epi64(a, b); }
  static inline void store_neg(int32_t* y, T acc, int64_t n) {
    const __m256i v = _mm256_sub_epi32(_mm256_setzero_si256(), _mm512_cvtepi64_epi32(acc));
    if (n >= 8) _mm256_storeu_si256((__m256i*)y, v);
    else if (n > 0) _mm256_mask_storeu_epi32(y, (__mmask8)((1u << n) - 1), v);
  }
};

struct VS {
  static constexpr int W = 16;
  using T = __m512i;
  static inline T load(const int32_t* p) { return _mm512_loadu_si512((const void*)p); }
  static inline void store(int32_t* p, T v) { _mm512_storeu_si512((void*)p, v); }
  static inline T set1(int32_t x) { return _mm512_set1_epi32(x); }
  static inline T add(T a, T b) { return _mm512_add_epi32(a, b); }
  static inline T bxor(T a, T b) { return _mm512_xor_si512(a, b); }
  static inline T sllv(T a, T s) { return _mm512_sllv_epi32(a, s); }
};

constexpr int FWD_MR = 4, FWD_NR = 4;
constexpr int64_t FWD_KC = 128;
constexpr int GIN_MR = 4, GIN_NR = 2;
constexpr int GWS_MR = 3, GWS_NR = 4;
constexpr int GWF_MR = 4, GWF_NR = 4;
constexpr int SAD_MR = 6, SAD_NR = 4;
constexpr int SH_MR = 4, SH_NR = 2;
#define ISA_NAME "avx512"
#include "kernels.inc"
#undef ISA_NAME

}  // namespace avx512
}  // namespace shiftadd_cpu

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace shiftadd_cpu {
const Kernels* kernels_avx512() { return &avx512::kTable; }
}  // namespace shiftadd_cpu

#else
namespace shiftadd_cpu {
const Kernels* kernels_avx512() { return nullptr; }
}  // namespace shiftadd_cpu
#endif
