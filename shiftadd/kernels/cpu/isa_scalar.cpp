// Portable scalar build of the block kernels (any CPU, any compiler); the compiler may still
// vectorise it for the baseline instruction set.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "isa.h"

namespace shiftadd_cpu {
namespace scalar {

struct V {
  static constexpr int W = 1;
  using T = float;
  static inline T zero() { return 0.0f; }
  static inline T load(const float* p) { return *p; }
  static inline void store(float* p, T v) { *p = v; }
  static inline T set1(float f) { return f; }
  static inline T add(T a, T b) { return a + b; }
  static inline T sub(T a, T b) { return a - b; }
  static inline T max(T a, T b) { return a > b ? a : b; }
  static inline T min(T a, T b) { return a < b ? a : b; }
  static inline T abs(T a) { return std::fabs(a); }
  static inline T fmadd(T a, T b, T c) { return a * b + c; }
  static inline T fnmadd(T a, T b, T c) { return c - a * b; }
  static inline T accum(T acc, T t) { return acc + t; }
  static inline T sign_mul(T t, T d, T acc) { return t > 0.0f ? acc + d : (t < 0.0f ? acc - d : acc); }
  static inline float hsum(T v) { return v; }
  static constexpr bool kGinSplit = false;
  static inline T fsub(T a, T b) { return a - b; }
  static inline T clamp1(T t) { return std::min(std::max(t, -1.0f), 1.0f); }
  static constexpr bool kSplit2 = false;
  static inline int64_t split2(const float*, int64_t, float*, float*) { return 0; }
  static constexpr bool kTranspose8 = false;
  static inline void transpose8(const float*, int64_t, float*, int64_t) {}
};

struct VI {
  static constexpr int OW = 1;
  using T = int64_t;
  static inline T zero() { return 0; }
  // a "vector" is the 8 bytes of one filter; bcast8 keeps a pointer to the 8 patch bytes
  static inline T load(const uint8_t* p) { return (T)(intptr_t)p; }
  static inline T bcast8(const uint8_t* p) { return (T)(intptr_t)p; }
  static inline T sad(T a, T b) {
    const uint8_t* x = (const uint8_t*)(intptr_t)a;
    const uint8_t* w = (const uint8_t*)(intptr_t)b;
    T s = 0;
    for (int i = 0; i < 8; ++i) s += std::abs((int)x[i] - (int)w[i]);
    return s;
  }
  static inline T add(T a, T b) { return a + b; }
  static inline void store_neg(int32_t* y, T acc, int64_t n) {
    if (n > 0) *y = -(int32_t)acc;
  }
};

struct VS {
  static constexpr int W = 1;
  using T = int32_t;
  static inline T load(const int32_t* p) { return *p; }
  static inline void store(int32_t* p, T v) { *p = v; }
  static inline T set1(int32_t x) { return x; }
  // wrap-around int32 arithmetic, like the vector units
  static inline T add(T a, T b) { return (int32_t)((uint32_t)a + (uint32_t)b); }
  static inline T bxor(T a, T b) { return a ^ b; }
  static inline T sllv(T a, T s) { return ((uint32_t)s >= 32u) ? 0 : (int32_t)((uint32_t)a << s); }
};

constexpr int FWD_MR = 4, FWD_NR = 2;
constexpr int64_t FWD_KC = 128;
constexpr int GIN_MR = 2, GIN_NR = 2;
constexpr int GWS_MR = 2, GWS_NR = 2;
constexpr int GWF_MR = 2, GWF_NR = 2;
constexpr int SAD_MR = 2, SAD_NR = 2;
constexpr int SH_MR = 2, SH_NR = 2;
#define ISA_NAME "scalar"
#include "kernels.inc"
#undef ISA_NAME

}  // namespace scalar

const Kernels* kernels_scalar() { return &scalar::kTable; }

}  // namespace shiftadd_cpu
