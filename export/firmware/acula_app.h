/* acula_app.h: audio in -> decision out on a microcontroller: the C front-end, the window, the int8 model.
 *
 * What acula_edge.load(bundle).classify does, per hop, in static memory (C99; the model is acula_model.h):
 *   acula_app_init();                                       // once
 *   for each block of 16-bit PCM at ACULA_SAMPLE_RATE (any length, e.g. one DMA half-buffer or one model hop):
 *       acula_app_push_i16(block, n, on_window, user);      // on_window(result, user) once per completed window
 *   acula_app_finish(on_window, user);                      // optional: zero-pad a short recording (pad=True)
 *   acula_app_decision(probabilities);                      // 1: last label (e.g. "abnormal"), 0: not, -1: none
 *   acula_app_reset();                                      // before the next recording
 *
 * Each window: log-mel frames (float32, or the Q15 front-end with -DACULA_Q15=1), the bundle's window
 * normalisation (per window / per window and band, as acula_edge.features.normalise_window; none for global),
 * int8 quantization with the input tensor's scale and zero point, the model, softmax of the dequantized logits.
 * The recording's probabilities are the mean over its windows and the decision is probability[last label] >=
 * ACULA_MODEL_THRESHOLD, as in the SDK's "mean" aggregation. Unlike the SDK there is no per-window quality gate
 * (silence, clipping, ...): every window counts, as with acula_edge.runtime.QualityConfig(enabled=False).
 */
#ifndef ACULA_APP_H
#define ACULA_APP_H

#include <stdint.h>

#include "acula_frontend.h"
#include "acula_model.h"

#ifdef __cplusplus
extern "C" {
#endif

#if !defined(ACULA_WINDOW_FRAMES) || !defined(ACULA_WINDOW_HOP_FRAMES)
#error "frontend_params.h must be generated with a Windowing (ACULA_WINDOW_FRAMES, ACULA_WINDOW_HOP_FRAMES)"
#endif
#if ACULA_WINDOW_FRAMES != ACULA_MODEL_INPUT_FRAMES || ACULA_N_MELS != ACULA_MODEL_INPUT_MELS
#error "frontend_params.h and model_data.h come from different bundles (window frames or mel bands differ)"
#endif
#if ACULA_WINDOW_HOP_FRAMES > ACULA_WINDOW_FRAMES
#error "the app slides overlapping or adjacent windows only (window hop <= window length)"
#endif

#define ACULA_APP_ERR_ARG (-10) /* NULL samples with n > 0, or n < 0 */

/* One model window's result, passed to the callback. */
typedef struct {
    long index;                                      /* window number in the recording, from 0 */
    int8_t embedding[ACULA_MODEL_EMBEDDING_SIZE];    /* real = SCALE * (q - ZERO_POINT), see model_data.h */
    int8_t logits[ACULA_MODEL_LOGITS_SIZE];
    float probabilities[ACULA_MODEL_NUM_LABELS];     /* softmax of the dequantized logits */
} acula_window_result_t;

typedef void (*acula_window_callback_t)(const acula_window_result_t *result, void *user);

/* Initialise the front-end and the model (acula_model_init); returns 0 or an ACULA_MODEL_ERR_* code. */
int acula_app_init(void);

/* Start a new recording: clears the front-end, the window and the running mean. */
void acula_app_reset(void);

/* Push n samples; calls on_window (may be NULL) for every window they complete. Returns the number of windows
 * completed, or ACULA_APP_ERR_ARG / an ACULA_MODEL_ERR_* code (the samples after a failed window are dropped). */
int acula_app_push_i16(const int16_t *samples, int n, acula_window_callback_t on_window, void *user);

/* End of the recording: if it was shorter than one window, zero-pad it to one window and score it (as the SDK's
 * classify(pad=True); without this call such a recording has no decision, as classify refuses it by default).
 * Returns the windows completed (0 or 1) or an error code. */
int acula_app_finish(acula_window_callback_t on_window, void *user);

/* Mean probabilities over the recording's windows so far into probabilities[ACULA_MODEL_NUM_LABELS] (may be NULL);
 * returns 1 if the last label's mean probability >= ACULA_MODEL_THRESHOLD, 0 if below, -1 before any window. */
int acula_app_decision(float *probabilities);

/* Normalise one window of log-mel frames as the bundle's front-end says and quantize it for the model input. */
void acula_app_quantize_window(const float frames[ACULA_WINDOW_FRAMES][ACULA_N_MELS],
                               int8_t out[ACULA_MODEL_INPUT_SIZE]);

#ifdef __cplusplus
}
#endif

#endif /* ACULA_APP_H */
