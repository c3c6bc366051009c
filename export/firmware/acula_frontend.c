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

/* In-place forward complex FFT of ACULA_M points stored as interleaved (re, im) values. */
static void fft_complex(acula_fft_t *d)
{
    int i, j, k, len;
    /* Bit-reversal permutation. */
    j = 0;
    for (i = 0; i < ACULA_M - 1; i++) {
        if (i < j) {
            acula_fft_t tr = d[2 * i], ti = d[2 * i + 1];
            d[2 * i] = d[2 * j];
            d[2 * i + 1] = d[2 * j + 1];
            d[2 * j] = tr;
            d[2 * j + 1] = ti;
        }
        k = ACULA_M >> 1;
        while (k >= 1 && k <= j) {
            j -= k;
            k >>= 1;
        }
        j += k;
    }
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

/* Log-mel of the ACULA_WIN_LENGTH samples in st->buf, written to out (ACULA_N_MELS floats). */
static void compute_frame(acula_frontend_t *st, float *out)
{
    acula_fft_t *w = st->work;
    float *p = st->power;
    int i, k, b, off;

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
        if (xf != NULL) {
            memcpy(st->buf + st->fill, xf + pos, (size_t)take * sizeof(float));
        } else {
            int i;
            for (i = 0; i < take; i++) {
                st->buf[st->fill + i] = (float)xs[pos + i] * (1.0f / 32768.0f);
            }
        }
        st->fill += take;
        pos += take;
        if (st->fill == ACULA_WIN_LENGTH) {
            compute_frame(st, out + (size_t)made * ACULA_N_MELS);
            made++;
#if ACULA_HOP_LENGTH < ACULA_WIN_LENGTH
            memmove(st->buf, st->buf + ACULA_HOP_LENGTH,
                    (size_t)(ACULA_WIN_LENGTH - ACULA_HOP_LENGTH) * sizeof(float));
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
