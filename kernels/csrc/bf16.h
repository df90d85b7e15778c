/* bf16 <-> fp32 for the CPU kernels: a bf16 value is the top half of an fp32's bits. */
#ifndef REALTIME_BF16_H
#define REALTIME_BF16_H

#include <immintrin.h>
#include <stdint.h>

static inline float bf16_to_f32(uint16_t v) {
    union { uint32_t u; float f; } bits = {(uint32_t)v << 16};
    return bits.f;
}

/* Round to nearest even, as torch's .to(torch.bfloat16) does; NaN stays NaN. */
static inline uint16_t f32_to_bf16(float f) {
    union { float f; uint32_t u; } bits = {f};
    if ((bits.u & 0x7fffffff) > 0x7f800000) return (uint16_t)((bits.u >> 16) | 0x40);
    return (uint16_t)((bits.u + 0x7fff + ((bits.u >> 16) & 1)) >> 16);
}

/* Eight bf16 values widened to fp32 with a shift (AVX2). */
static inline __m256 bf16x8(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

#endif
