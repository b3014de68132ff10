/* Weight-only int8 linear layer on x86 CPUs (AVX2 + FMA): y = (x @ w^T) * scale.

   x is float32 [M, K] (rows `ldx` elements apart), w int8 [N, K] row-major, scale float32
   [N] (one per output channel), y float32 [M, N] contiguous.

   At decode sizes (small M) the layer is bound by reading the weights, so each weight row
   is read once, four rows at a time: for one or two activation rows they are widened to
   float32 in registers and dotted there; for more, widened into an L1-sized buffer, a
   chunk of columns at a time, and dotted with every activation row from it (two
   activation rows share each load of the four weight vectors). The threads split the
   output channels, each a contiguous run of rows, so each streams its own part of w;
   small layers run on one thread.

   OpenMP: the library links libgomp.so.1, which in a torch process is the runtime torch
   loaded already, so the kernel and torch's own ops share one pool of threads.

   Built on the machine that runs it (engine/core/kernels/cpu_int8.py); where it does not
   build, torch's int8 matmul serves. */

#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#if !defined(__AVX2__) || !defined(__FMA__)
#error "needs AVX2 and FMA; the torch path serves this CPU"
#endif

#define ROWS 4   /* weight rows widened and dotted together */
#define CHUNK 512 /* columns per widening: ROWS * CHUNK floats (8 KiB) stay in L1 */

static const int8_t ZEROS[CHUNK]; /* the rows past N of the last tile */

/* The four lanes' sums of a, b, c, d. */
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* buf[r][0:n] = (float)w_r[0:n] for ROWS rows `ld` bytes apart. */
static inline void widen(const int8_t *w, int64_t ld, int n, float buf[ROWS][CHUNK]) {
    int vec = n & ~7;
    for (int r = 0; r < ROWS; r++) {
        const int8_t *src = w + r * ld;
        for (int k = 0; k < vec; k += 8) {
            __m128i b = _mm_loadl_epi64((const __m128i *)(src + k));
            _mm256_storeu_ps(buf[r] + k, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)));
        }
        for (int k = vec; k < n; k++) buf[r][k] = (float)src[k];
    }
}

/* acc[m][r] += buf[r][0:n] . x_m[0:n] for every activation row m. */
static void dot_rows(const float *x, int64_t M, int64_t ldx, int n, float buf[ROWS][CHUNK], float (*acc)[ROWS]) {
    int vec = n & ~7;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) {
        const float *x0 = x + m * ldx, *x1 = x0 + ldx;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int k = 0; k < vec; k += 8) {
            __m256 u = _mm256_loadu_ps(x0 + k), v = _mm256_loadu_ps(x1 + k);
            __m256 w0 = _mm256_loadu_ps(buf[0] + k), w1 = _mm256_loadu_ps(buf[1] + k);
            __m256 w2 = _mm256_loadu_ps(buf[2] + k), w3 = _mm256_loadu_ps(buf[3] + k);
            a0 = _mm256_fmadd_ps(u, w0, a0), a1 = _mm256_fmadd_ps(u, w1, a1);
            a2 = _mm256_fmadd_ps(u, w2, a2), a3 = _mm256_fmadd_ps(u, w3, a3);
            b0 = _mm256_fmadd_ps(v, w0, b0), b1 = _mm256_fmadd_ps(v, w1, b1);
            b2 = _mm256_fmadd_ps(v, w2, b2), b3 = _mm256_fmadd_ps(v, w3, b3);
        }
        _mm_storeu_ps(acc[m], _mm_add_ps(_mm_loadu_ps(acc[m]), hsum4(a0, a1, a2, a3)));
        _mm_storeu_ps(acc[m + 1], _mm_add_ps(_mm_loadu_ps(acc[m + 1]), hsum4(b0, b1, b2, b3)));
        for (int k = vec; k < n; k++)
            for (int r = 0; r < ROWS; r++) acc[m][r] += buf[r][k] * x0[k], acc[m + 1][r] += buf[r][k] * x1[k];
    }
    for (; m < M; m++) {
        const float *x0 = x + m * ldx;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < vec; k += 8) {
            __m256 u = _mm256_loadu_ps(x0 + k);
            a0 = _mm256_fmadd_ps(u, _mm256_loadu_ps(buf[0] + k), a0);
            a1 = _mm256_fmadd_ps(u, _mm256_loadu_ps(buf[1] + k), a1);
            a2 = _mm256_fmadd_ps(u, _mm256_loadu_ps(buf[2] + k), a2);
            a3 = _mm256_fmadd_ps(u, _mm256_loadu_ps(buf[3] + k), a3);
        }
        _mm_storeu_ps(acc[m], _mm_add_ps(_mm_loadu_ps(acc[m]), hsum4(a0, a1, a2, a3)));
        for (int k = vec; k < n; k++)
            for (int r = 0; r < ROWS; r++) acc[m][r] += buf[r][k] * x0[k];
    }
}

static inline __m256 widen8(const int8_t *w) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w)));
}

/* y rows m of one or two activation rows (M - m <= 2) for four whole weight rows: widened
   in registers, as nothing would reuse a widened buffer. */
static void direct(const float *x, int64_t M, int64_t K, int64_t ldx, const int8_t *w, float (*acc)[ROWS]) {
    int64_t vec = K & ~7;
    const float *x0 = x, *x1 = M > 1 ? x + ldx : x; /* one row: the second sum is discarded */
    const int8_t *r0 = w, *r1 = w + K, *r2 = w + 2 * K, *r3 = w + 3 * K;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int64_t k = 0; k < vec; k += 8) {
        __m256 u = _mm256_loadu_ps(x0 + k), v = _mm256_loadu_ps(x1 + k);
        __m256 w0 = widen8(r0 + k), w1 = widen8(r1 + k), w2 = widen8(r2 + k), w3 = widen8(r3 + k);
        a0 = _mm256_fmadd_ps(u, w0, a0), a1 = _mm256_fmadd_ps(u, w1, a1);
        a2 = _mm256_fmadd_ps(u, w2, a2), a3 = _mm256_fmadd_ps(u, w3, a3);
        if (M > 1) {
            b0 = _mm256_fmadd_ps(v, w0, b0), b1 = _mm256_fmadd_ps(v, w1, b1);
            b2 = _mm256_fmadd_ps(v, w2, b2), b3 = _mm256_fmadd_ps(v, w3, b3);
        }
    }
    _mm_storeu_ps(acc[0], hsum4(a0, a1, a2, a3));
    if (M > 1) _mm_storeu_ps(acc[1], hsum4(b0, b1, b2, b3));
    for (int64_t k = vec; k < K; k++)
        for (int r = 0; r < ROWS; r++)
            for (int64_t m = 0; m < M; m++) acc[m][r] += (float)w[r * K + k] * x[m * ldx + k];
}

/* Output channels n0 .. n0 + ROWS (those past N read a zero row, and are not written). */
static void tile(const float *x, int64_t M, int64_t K, int64_t ldx, const int8_t *w, const float *scale,
                 float *y, int64_t N, int64_t n0, float (*acc)[ROWS]) {
    float buf[ROWS][CHUNK];
    int rows = N - n0 < ROWS ? (int)(N - n0) : ROWS;
    if (M <= 2 && rows == ROWS) {
        direct(x, M, K, ldx, w + n0 * K, acc);
        for (int64_t m = 0; m < M; m++)
            for (int r = 0; r < ROWS; r++) y[m * N + n0 + r] = acc[m][r] * scale[n0 + r];
        return;
    }
    memset(acc, 0, sizeof(float) * ROWS * (size_t)M);
    for (int64_t k0 = 0; k0 < K; k0 += CHUNK) {
        int n = K - k0 < CHUNK ? (int)(K - k0) : CHUNK;
        if (rows == ROWS) {
            widen(w + n0 * K + k0, K, n, buf);
        } else { /* the last, partial tile: missing rows widen from zeros */
            const int8_t *src[ROWS];
            for (int r = 0; r < ROWS; r++) src[r] = r < rows ? w + (n0 + r) * K + k0 : ZEROS;
            for (int r = 0; r < ROWS; r++)
                for (int k = 0; k < n; k++) buf[r][k] = (float)src[r][k];
        }
        dot_rows(x + k0, M, ldx, n, buf, acc);
    }
    for (int64_t m = 0; m < M; m++)
        for (int r = 0; r < rows; r++) y[m * N + n0 + r] = acc[m][r] * scale[n0 + r];
}

/* acc: scratch of threads * M * ROWS floats. */
void mgpud_int8_linear(const float *x, int64_t M, int64_t K, int64_t ldx, const int8_t *w, const float *scale,
                       float *y, int64_t N, float *acc, int threads) {
    if (M <= 0 || N <= 0) return;
    int64_t tiles = (N + ROWS - 1) / ROWS;
    /* A thread per 4M multiply-adds (~0.5 ms): a fork and join costs tens of microseconds on
       an idle machine, and a whole scheduler slice on a busy one when a thread of the team
       is not running; a decode step of a small model would pay it for every layer. */
    int64_t worth = M * N * K / (4 << 20);
    if (threads > worth) threads = (int)worth;
    if (threads > tiles) threads = (int)tiles;
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads)
    {
        int64_t me = omp_get_thread_num(), all = omp_get_num_threads();
        float (*mine)[ROWS] = (float (*)[ROWS])(acc + me * M * ROWS);
        for (int64_t t = tiles * me / all; t < tiles * (me + 1) / all; t++)
            tile(x, M, K, ldx, w, scale, y, N, t * ROWS, mine);
    }
}
