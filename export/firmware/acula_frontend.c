/* acula_frontend.c: streaming log-mel front-end (see acula_frontend.h). C99, float32 (by default), no heap,
 * no recursion.
 *
 * The real FFT of N = ACULA_N_FFT samples is computed as an N/2-point complex FFT of the even/odd samples packed
 * as (re, im) pairs (iterative radix-2, decimation in time), followed by the standard split step
 *   X[k] = (Z[k] + conj Z[M-k]) / 2 + W^k (Z[k] - conj Z[M-k]) / 2i,  W = exp(-2 pi i / N),  M = N/2.
 * Twiddles come from the generated tables acula_twiddle_cos/sin (cos, sin of 2 pi k / N, k < N/2).
 * The FFT arithmetic type is acula_fft_t (float, or double with -DACULA_FFT_DOUBLE=1); the power spectrum is
 * rounded to float before the mel filterbank, as in the numpy reference.
 */
#include "acula_frontend.h"
/* Second inclusion of the generated header, now defining its tables (they need acula_fft_t). */
#define ACULA_FRONTEND_TABLES
#include "frontend_params.h"

#include <math.h>
#include <string.h>

#if ACULA_PARAMS_VERSION != 1
#error "frontend_params.h was generated for another version of acula_frontend.c; regenerate it"
#endif

#define ACULA_M (ACULA_N_FFT / 2)

#if ACULA_FFT_DOUBLE
#define ACULA_SQRT sqrt
#else
#define ACULA_SQRT sqrtf
#endif

/* Compile-time checks (C99 has no _Static_assert): a negative array size fails the build. */
typedef char acula_check_n_fft_pow2[((ACULA_N_FFT & (ACULA_N_FFT - 1)) == 0 && ACULA_N_FFT >= 2) ? 1 : -1];
typedef char acula_check_window_fits[(ACULA_WIN_OFFSET + ACULA_WIN_LENGTH <= ACULA_N_FFT) ? 1 : -1];
typedef char acula_check_hop[(ACULA_HOP_LENGTH > 0) ? 1 : -1];

void acula_frontend_init(acula_frontend_t *st)
{
    if (st == NULL) {
        return;
    }
    memset(st, 0, sizeof(*st));
}

void acula_frontend_reset(acula_frontend_t *st)
{
    if (st == NULL) {
        return;
    }
    st->fill = 0;
    st->skip = 0;
}

size_t acula_frontend_state_bytes(void)
{
    return sizeof(acula_frontend_t);
}

int acula_frontend_frames_for(const acula_frontend_t *st, int n)
{
    int32_t need;
    if (st == NULL || n < 0) {
        return 0;
    }
    need = st->skip + (ACULA_WIN_LENGTH - st->fill); /* samples until the next frame is complete */
    if (n < need) {
        return 0;
    }
    return 1 + (n - need) / ACULA_HOP_LENGTH;
}

/* In-place bit-reversal permutation of ACULA_M complex values of `pair_bytes` bytes each (re, im), for either FFT. */
static void bit_reverse(void *data, size_t pair_bytes)
{
    unsigned char *d = (unsigned char *)data;
    unsigned char tmp[2 * sizeof(double)];
    int i, j = 0, k;
    for (i = 0; i < ACULA_M - 1; i++) {
        if (i < j) {
            memcpy(tmp, d + (size_t)i * pair_bytes, pair_bytes);
            memcpy(d + (size_t)i * pair_bytes, d + (size_t)j * pair_bytes, pair_bytes);
            memcpy(d + (size_t)j * pair_bytes, tmp, pair_bytes);
        }
        k = ACULA_M >> 1;
        while (k >= 1 && k <= j) {
            j -= k;
            k >>= 1;
        }
        j += k;
    }
}

#if !ACULA_Q15
/* In-place forward complex FFT of ACULA_M points stored as interleaved (re, im) values. */
static void fft_complex(acula_fft_t *d)
{
    int len;
    bit_reverse(d, 2 * sizeof d[0]); /* bit-reversal permutation of the complex values */
    /* Butterflies: stage of length len uses W_len^t = W_N^(t * N / len). */
    for (len = 2; len <= ACULA_M; len <<= 1) {
        int half = len >> 1;
        int step = ACULA_N_FFT / len;
        int t;
        for (t = 0; t < half; t++) {
            acula_fft_t c = acula_twiddle_cos[t * step];
            acula_fft_t s = acula_twiddle_sin[t * step]; /* W = c - i s */
            int a;
            for (a = t; a < ACULA_M; a += len) {
                int b = a + half;
                acula_fft_t br = d[2 * b], bi = d[2 * b + 1];
                acula_fft_t tr = br * c + bi * s;
                acula_fft_t ti = bi * c - br * s;
                d[2 * b] = d[2 * a] - tr;
                d[2 * b + 1] = d[2 * a + 1] - ti;
                d[2 * a] += tr;
                d[2 * a + 1] += ti;
            }
        }
    }
}

static float spectrum_value(acula_fft_t re, acula_fft_t im)
{
    acula_fft_t p = re * re + im * im;
#if ACULA_POWER == 1
    p = ACULA_SQRT(p);
#endif
    return (float)p;
}

/* Power (or magnitude) spectrum of the ACULA_WIN_LENGTH samples in st->buf, written to st->power. */
static void spectrum(acula_frontend_t *st)
{
    acula_fft_t *w = st->work;
    float *p = st->power;
    int i, k;

    for (i = 0; i < ACULA_WIN_OFFSET; i++) {
        w[i] = 0;
    }
    for (i = 0; i < ACULA_WIN_LENGTH; i++) {
        w[ACULA_WIN_OFFSET + i] = (acula_fft_t)st->buf[i] * acula_window[i];
    }
    for (i = ACULA_WIN_OFFSET + ACULA_WIN_LENGTH; i < ACULA_N_FFT; i++) {
        w[i] = 0;
    }

    fft_complex(w); /* w now holds Z[0..M-1], the FFT of z[n] = x[2n] + i x[2n+1] */

    p[0] = spectrum_value(w[0] + w[1], 0);
    p[ACULA_M] = spectrum_value(w[0] - w[1], 0);
    for (k = 1; k <= ACULA_M / 2; k++) {
        const acula_fft_t half = (acula_fft_t)0.5;
        int m = ACULA_M - k;
        acula_fft_t zr = w[2 * k], zi = w[2 * k + 1];
        acula_fft_t yr = w[2 * m], yi = w[2 * m + 1];
        acula_fft_t er = half * (zr + yr), ei = half * (zi - yi);  /* even part */
        acula_fft_t orr = half * (zi + yi), oi = -half * (zr - yr); /* odd part */
        acula_fft_t c = acula_twiddle_cos[k], s = acula_twiddle_sin[k];
        acula_fft_t tr = orr * c + oi * s; /* W^k * odd, W^k = c - i s */
        acula_fft_t ti = oi * c - orr * s;
        p[k] = spectrum_value(er + tr, ei + ti);
        if (m != k) {
            p[m] = spectrum_value(er - tr, ti - ei); /* X[M-k] = conj(even - W^k odd) */
        }
    }
}
#else /* ACULA_Q15 */

/* floor(x / 2^r) for r >= 0, without right-shifting a negative value (implementation-defined in C99). */
static int64_t floor_shift(int64_t x, int r)
{
    return x >= 0 ? x >> r : -((-x - 1) >> r) - 1;
}

/* x / 2^r rounded to nearest (halves up). */
static int32_t round_shift(int64_t x, int r)
{
    return r > 0 ? (int32_t)floor_shift(x + ((int64_t)1 << (r - 1)), r) : (int32_t)x;
}

/* In-place forward complex FFT of ACULA_M Q15 points (interleaved re, im), block floating point: a stage halves
 * its outputs only when its inputs could overflow (a butterfly's output modulus is at most twice its inputs', and a
 * component at most its modulus: components below 2^13 stay below 2^15 unscaled). Returns the number of halved
 * stages h: the result is the FFT / 2^h. */
static int fft_complex_q15(int16_t *d)
{
    int i, len, halved = 0;
    bit_reverse(d, 2 * sizeof d[0]);
    for (len = 2; len <= ACULA_M; len <<= 1) {
        int half = len >> 1;
        int step = ACULA_N_FFT / len;
        int t, h = 0;
        for (i = 0; i < 2 * ACULA_M; i++) {
            if (d[i] >= (1 << 13) || d[i] <= -(1 << 13)) {
                h = 1;
                break;
            }
        }
        halved += h;
        for (t = 0; t < half; t++) {
            int32_t c = acula_twiddle_cos[t * step];
            int32_t s = acula_twiddle_sin[t * step]; /* W = c - i s, Q15 */
            int a;
            for (a = t; a < ACULA_M; a += len) {
                int b = a + half;
                int32_t br = d[2 * b], bi = d[2 * b + 1], ar = d[2 * a], ai = d[2 * a + 1];
                int32_t tr = round_shift((int64_t)br * c + (int64_t)bi * s, 15);
                int32_t ti = round_shift((int64_t)bi * c - (int64_t)br * s, 15);
                d[2 * a] = (int16_t)round_shift(ar + tr, h);
                d[2 * a + 1] = (int16_t)round_shift(ai + ti, h);
                d[2 * b] = (int16_t)round_shift(ar - tr, h);
                d[2 * b + 1] = (int16_t)round_shift(ai - ti, h);
            }
        }
    }
    return halved;
}

/* |X|^2 (or |X|) of X = (re + i im) * scale, in float. */
static float spectrum_value_q15(int64_t re, int64_t im, float scale)
{
    float r = (float)re * scale, i = (float)im * scale;
    float p = r * r + i * i;
#if ACULA_POWER == 1
    p = sqrtf(p);
#endif
    return p;
}

/* The fixed-point twin of the float spectrum(): Q15 samples times the Q15 window (Q30), scaled by a per-frame block
 * exponent 2^-r so the frame's peak uses 14 bits, Q15 FFT, split step in 64-bit integers, then float. */
static void spectrum(acula_frontend_t *st)
{
    int16_t *w = st->work;
    float *p = st->power;
    int32_t peak = 0;
    int i, k, r = 0, halved;
    float scale;

    for (i = 0; i < ACULA_WIN_LENGTH; i++) {
        int32_t v = (int32_t)st->buf[i] * acula_window[i];
        if (v < 0) {
            v = -v;
        }
        if (v > peak) {
            peak = v;
        }
    }
    while ((peak >> r) >= (1 << 14)) { /* the frame's peak uses 14 bits (the FFT halves a stage when needed) */
        r++;
    }
    for (i = 0; i < ACULA_WIN_OFFSET; i++) {
        w[i] = 0;
    }
    for (i = 0; i < ACULA_WIN_LENGTH; i++) {
        w[ACULA_WIN_OFFSET + i] = (int16_t)round_shift((int32_t)st->buf[i] * acula_window[i], r);
    }
    for (i = ACULA_WIN_OFFSET + ACULA_WIN_LENGTH; i < ACULA_N_FFT; i++) {
        w[i] = 0;
    }

    halved = fft_complex_q15(w); /* w = Z / 2^halved in units of 2^(r - 30), Z the FFT of x[2n] + i x[2n+1] */

    /* The split step below works on 2 * 2^15 * X (twiddles are Q15); undo that, the FFT's scaling and 2^(r-30). */
    scale = ldexpf(1.0f, halved + r - 30 - 16);
    p[0] = spectrum_value_q15(((int64_t)w[0] + w[1]) << 16, 0, scale);
    p[ACULA_M] = spectrum_value_q15(((int64_t)w[0] - w[1]) << 16, 0, scale);
    for (k = 1; k <= ACULA_M / 2; k++) {
        int m = ACULA_M - k;
        int64_t zr = w[2 * k], zi = w[2 * k + 1], yr = w[2 * m], yi = w[2 * m + 1];
        int64_t er = (zr + yr) * 32768, ei = (zi - yi) * 32768; /* 2 * 2^15 * even part */
        int64_t orr = zi + yi, oi = yr - zr;                     /* 2 * odd part */
        int64_t c = acula_twiddle_cos[k], s = acula_twiddle_sin[k];
        int64_t tr = orr * c + oi * s; /* 2 * 2^15 * W^k * odd */
        int64_t ti = oi * c - orr * s;
        p[k] = spectrum_value_q15(er + tr, ei + ti, scale);
        if (m != k) {
            p[m] = spectrum_value_q15(er - tr, ti - ei, scale);
        }
    }
}
#endif /* ACULA_Q15 */

/* Log-mel of the spectrum in st->power, written to out (ACULA_N_MELS floats). */
static void mel_log(const acula_frontend_t *st, float *out)
{
    const float *p = st->power;
    int i, b, off;

    off = 0;
    for (b = 0; b < ACULA_N_MELS; b++) {
        const float *wt = acula_mel_weights + off;
        const float *pb = p + acula_mel_start[b];
        int len = (int)acula_mel_len[b];
        float acc = 0.0f;
        for (i = 0; i < len; i++) {
            acc += wt[i] * pb[i];
        }
        off += len;
        acc += ACULA_LOG_OFFSET;
        if (!(acc >= ACULA_LOG_FLOOR)) { /* also maps NaN to the floor */
            acc = ACULA_LOG_FLOOR;
        }
        acc = logf(acc);
#if ACULA_NORM_GLOBAL
        acc = (acc - ACULA_NORM_MEAN) / ACULA_NORM_STD;
#endif
        out[b] = acc;
    }
}

/* Copy take samples from xf (float) or xs (int16, whichever is not NULL), starting at pos, into dst. */
static void store_samples(acula_sample_t *dst, const float *xf, const int16_t *xs, int pos, int take)
{
    int i;
#if ACULA_Q15
    if (xs != NULL) {
        memcpy(dst, xs + pos, (size_t)take * sizeof(int16_t));
        return;
    }
    for (i = 0; i < take; i++) { /* round to Q15, saturating; NaN becomes 0 */
        float v = xf[pos + i] * 32768.0f;
        dst[i] = (int16_t)(v >= 32767.0f ? 32767 : v <= -32768.0f ? -32768
                           : v >= 0.0f ? (int32_t)(v + 0.5f) : v < 0.0f ? -(int32_t)(0.5f - v) : 0);
    }
#else
    if (xf != NULL) {
        memcpy(dst, xf + pos, (size_t)take * sizeof(float));
        return;
    }
    for (i = 0; i < take; i++) {
        dst[i] = (float)xs[pos + i] * (1.0f / 32768.0f);
    }
#endif
}

/* Shared body of the float and int16 pushes: exactly one of xf, xs is used. */
static int push_samples(acula_frontend_t *st, const float *xf, const int16_t *xs, int n, float *out,
                        int max_frames)
{
    int pos = 0, made = 0, frames;
    if (st == NULL || n < 0 || (n > 0 && xf == NULL && xs == NULL)) {
        return ACULA_FRONTEND_ERR_ARG;
    }
    frames = acula_frontend_frames_for(st, n);
    if (frames > 0 && (out == NULL || frames > max_frames)) {
        return ACULA_FRONTEND_ERR_SPACE;
    }
    while (pos < n) {
        int take;
        if (st->skip > 0) {
            take = (n - pos < st->skip) ? n - pos : (int)st->skip;
            st->skip -= take;
            pos += take;
            continue;
        }
        take = ACULA_WIN_LENGTH - (int)st->fill;
        if (take > n - pos) {
            take = n - pos;
        }
        store_samples(st->buf + st->fill, xf, xs, pos, take);
        st->fill += take;
        pos += take;
        if (st->fill == ACULA_WIN_LENGTH) {
            spectrum(st);
            mel_log(st, out + (size_t)made * ACULA_N_MELS);
            made++;
#if ACULA_HOP_LENGTH < ACULA_WIN_LENGTH
            memmove(st->buf, st->buf + ACULA_HOP_LENGTH,
                    (size_t)(ACULA_WIN_LENGTH - ACULA_HOP_LENGTH) * sizeof(st->buf[0]));
            st->fill = ACULA_WIN_LENGTH - ACULA_HOP_LENGTH;
#else
            st->fill = 0;
            st->skip = ACULA_HOP_LENGTH - ACULA_WIN_LENGTH;
#endif
        }
    }
    return made;
}

int acula_frontend_push(acula_frontend_t *st, const float *samples, int n, float *out_frames, int max_frames)
{
    return push_samples(st, samples, NULL, n, out_frames, max_frames);
}

int acula_frontend_push_i16(acula_frontend_t *st, const int16_t *samples, int n, float *out_frames,
                            int max_frames)
{
    return push_samples(st, NULL, samples, n, out_frames, max_frames);
}
