/* acula_frontend.h: streaming log-mel front-end for microcontrollers (portable C99, float32, no heap).
 *
 * Computes the frames of acula_edge.features.LogMel (to float32 rounding) for the FrontendConfig that generated
 * frontend_params.h (acula_edge.export.firmware.header.write_frontend_header):
 *   frame i covers samples [i*HOP, i*HOP + WIN); the window is zero-padded (centred) to N_FFT; real FFT;
 *   power (or magnitude); sparse mel filterbank; log(max(mel + LOG_OFFSET, LOG_FLOOR));
 *   with ACULA_NORM_GLOBAL, (log - NORM_MEAN) / NORM_STD. (NaN audio gives LOG_FLOOR bands where numpy gives NaN.)
 *
 * Calling sequence:
 *   static acula_frontend_t fe;          // ACULA_RAM_BYTES; static, not on a small stack
 *   acula_frontend_init(&fe);
 *   for each block of samples (any length, e.g. one DMA half-buffer):
 *       int k = acula_frontend_push(&fe, block, n, frames, max_frames);   // k new frames of ACULA_N_MELS floats
 *   acula_frontend_reset(&fe);          // before an unrelated recording
 *
 * Pushing a recording in blocks of any sizes gives the same frames as pushing it at once.
 */
#ifndef ACULA_FRONTEND_H
#define ACULA_FRONTEND_H

#include <stddef.h>
#include <stdint.h>

#include "frontend_params.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ACULA_FRONTEND_ERR_ARG (-1)   /* NULL state / samples, or n < 0 */
#define ACULA_FRONTEND_ERR_SPACE (-2) /* out_frames NULL or max_frames too small; nothing was consumed */

/* Arithmetic of the window product, FFT and power: float32 by default; build with -DACULA_FFT_DOUBLE=1 for
 * float64 (as the numpy reference computes it) on cores with a double-precision FPU (Cortex-M7, host). float32
 * rounding shows only in bands far (> 40 dB) below a frame's loudest band; see tests/test_c_frontend.py. */
/* Or build with -DACULA_Q15=1 for a fixed-point variant (cores without an FPU, or to halve the state and tables):
 * samples, window and twiddles in Q15 (int16), the window product and FFT in integers with a per-frame block
 * exponent (the frame is scaled to use the full 16 bits, each FFT stage halves), the split step in 64-bit
 * integers; only the mel filterbank and log run in float. Its error against numpy is measured in
 * tests/test_c_frontend.py. */
#if ACULA_Q15 && ACULA_FFT_DOUBLE
#error "ACULA_Q15 and ACULA_FFT_DOUBLE exclude each other"
#endif
#if ACULA_Q15
typedef int16_t acula_fft_t;    /* Q15: value / 32768 */
typedef int16_t acula_sample_t; /* Q15 samples, as int16 PCM */
#elif ACULA_FFT_DOUBLE
typedef double acula_fft_t;
typedef float acula_sample_t;
#else
typedef float acula_fft_t;
typedef float acula_sample_t;
#endif

/* One stream's state. Sized by frontend_params.h; holds no pointers, so it may be copied or zeroed. */
typedef struct {
    acula_fft_t work[ACULA_N_FFT]; /* windowed frame; the FFT runs in place here */
    acula_sample_t buf[ACULA_WIN_LENGTH]; /* samples of the frame being filled */
    float power[ACULA_N_FREQS];    /* power (or magnitude) spectrum of the current frame */
    int32_t fill;                 /* valid samples in buf */
    int32_t skip;                 /* samples still to drop before the next frame starts (HOP > WIN) */
} acula_frontend_t;

/* Prepare a state for a new stream. */
void acula_frontend_init(acula_frontend_t *st);

/* Forget buffered samples: the next sample pushed is sample 0 of a new recording. */
void acula_frontend_reset(acula_frontend_t *st);

/* Number of frames a push of n samples would return now (0 if n < 0 or st is NULL). */
int acula_frontend_frames_for(const acula_frontend_t *st, int n);

/* Append n float samples (at ACULA_SAMPLE_RATE, nominally in [-1, 1]) and write the frames they complete to
 * out_frames (frame-major, ACULA_N_MELS floats each). Returns the number of frames written (>= 0), or
 * ACULA_FRONTEND_ERR_SPACE, consuming nothing, if more than max_frames would be produced (size the buffer with
 * acula_frontend_frames_for), or ACULA_FRONTEND_ERR_ARG. */
int acula_frontend_push(acula_frontend_t *st, const float *samples, int n, float *out_frames, int max_frames);

/* As acula_frontend_push for 16-bit PCM, scaled by 1/32768 (as libsndfile / soundfile read it). */
int acula_frontend_push_i16(acula_frontend_t *st, const int16_t *samples, int n, float *out_frames,
                            int max_frames);

/* sizeof(acula_frontend_t), for callers (and bindings) that allocate the state themselves. */
size_t acula_frontend_state_bytes(void);

#ifdef __cplusplus
}
#endif

#endif /* ACULA_FRONTEND_H */
