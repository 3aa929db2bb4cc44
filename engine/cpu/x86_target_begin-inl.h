// Opens a region of x86 kernels compiled for the instruction sets named by
// SINKSERVE_X86_TARGET, which the includer defines (SINKSERVE_X86_AVX2 or
// SINKSERVE_X86_AVX512 from matmul_internal.h); x86_target_end-inl.h closes
// it. Include it after every other header, so that inline functions of other
// headers keep their baseline code (see matmul_internal.h). Inside,
// SINKSERVE_X86_KERNELS is 1 when the compiler can build such code (x86-64
// GCC or Clang), else 0 and the includer provides its fallback.
//
// No include guard: each kernel file opens one region.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which its own
// -Wuninitialized flags (GCC bug 105593); the warning must be off where the
// intrinsics headers are read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#define SINKSERVE_X86_KERNELS 1
// The target string must be a literal inside the pragma: stringize it there
// after expanding SINKSERVE_X86_TARGET (Highway's HWY_PRAGMA does the same).
#define SINKSERVE_PRAGMA_(x) _Pragma(#x)
#define SINKSERVE_PRAGMA(x) SINKSERVE_PRAGMA_(x)
#if defined(__clang__)
SINKSERVE_PRAGMA(clang attribute push(__attribute__((target(SINKSERVE_X86_TARGET))),
                                      apply_to = function))
#else
#pragma GCC push_options
SINKSERVE_PRAGMA(GCC target(SINKSERVE_X86_TARGET))
#endif

#else
#define SINKSERVE_X86_KERNELS 0
#endif
