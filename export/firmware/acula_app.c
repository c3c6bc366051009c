/* acula_app.c: the per-hop application around the C front-end and the int8 model (see acula_app.h). */
#include "acula_app.h"

#include <math.h>
#include <string.h>

#define ACULA_NORM_PER_WINDOW (!ACULA_NORM_GLOBAL)  /* per_window or per_window_band: the window is normalised */
#define ACULA_STD_FLOOR 1e-5f                       /* as acula_edge.features.normalise_window */

static acula_frontend_t frontend;                         /* ACULA_RAM_BYTES */
static float window[ACULA_WINDOW_FRAMES][ACULA_N_MELS];   /* log-mel frames of the current window, oldest first */
static int8_t model_input[ACULA_MODEL_INPUT_SIZE];
static acula_window_result_t result;
static int filled;          /* frames in window[] */
static long windows_done;   /* windows scored in this recording */
static long samples_seen;   /* samples pushed in this recording */
static double probability_sum[ACULA_MODEL_NUM_LABELS];

int acula_app_init(void)
{
    acula_frontend_init(&frontend);
    acula_app_reset();
    return acula_model_init();
}

void acula_app_reset(void)
{
    acula_frontend_reset(&frontend);
    filled = 0;
    windows_done = 0;
    samples_seen = 0;
    memset(probability_sum, 0, sizeof(probability_sum));
}

static int8_t quantize(float x)
{
    /* q = round(x / scale) + zero_point, rounding half to even as numpy does (rintf in the default mode) */
    float q = rintf(x / ACULA_MODEL_INPUT_SCALE) + (float)ACULA_MODEL_INPUT_ZERO_POINT;
    return (int8_t)(q < -128.0f ? -128 : q > 127.0f ? 127 : (int)q);
}

void acula_app_quantize_window(const float frames[ACULA_WINDOW_FRAMES][ACULA_N_MELS],
                               int8_t out[ACULA_MODEL_INPUT_SIZE])
{
    int t, m;
#if ACULA_NORM_PER_WINDOW
    static float mean[ACULA_N_MELS]; /* the window mean, per band for per_window_band; static: not on the stack */
    double sq = 0.0;
    float std;
    for (m = 0; m < ACULA_N_MELS; m++) {
        double s = 0.0;
        for (t = 0; t < ACULA_WINDOW_FRAMES; t++) {
            s += frames[t][m];
        }
        mean[m] = (float)(s / ACULA_WINDOW_FRAMES);
    }
#if !ACULA_NORM_PER_BAND
    {
        double s = 0.0;
        for (m = 0; m < ACULA_N_MELS; m++) {
            s += mean[m];
        }
        for (m = 0; m < ACULA_N_MELS; m++) {
            mean[m] = (float)(s / ACULA_N_MELS);
        }
    }
#endif
    for (t = 0; t < ACULA_WINDOW_FRAMES; t++) {
        for (m = 0; m < ACULA_N_MELS; m++) {
            float c = frames[t][m] - mean[m];
            sq += (double)c * c;
        }
    }
    std = (float)sqrt(sq / ((double)ACULA_WINDOW_FRAMES * ACULA_N_MELS));
    if (std < ACULA_STD_FLOOR) {
        std = ACULA_STD_FLOOR;
    }
    for (t = 0; t < ACULA_WINDOW_FRAMES; t++) {
        for (m = 0; m < ACULA_N_MELS; m++) {
            out[t * ACULA_N_MELS + m] = quantize((frames[t][m] - mean[m]) / std);
        }
    }
#else
    for (t = 0; t < ACULA_WINDOW_FRAMES; t++) {
        for (m = 0; m < ACULA_N_MELS; m++) {
            out[t * ACULA_N_MELS + m] = quantize(frames[t][m]);
        }
    }
#endif
}

static void softmax(const int8_t *logits, float *p)
{
    float z[ACULA_MODEL_NUM_LABELS];
    float top, sum = 0.0f;
    int k;
    for (k = 0; k < ACULA_MODEL_NUM_LABELS; k++) {
        z[k] = ACULA_MODEL_LOGITS_SCALE * (float)(logits[k] - ACULA_MODEL_LOGITS_ZERO_POINT);
    }
    top = z[0];
    for (k = 1; k < ACULA_MODEL_NUM_LABELS; k++) {
        top = z[k] > top ? z[k] : top;
    }
    for (k = 0; k < ACULA_MODEL_NUM_LABELS; k++) {
        p[k] = expf(z[k] - top);
        sum += p[k];
    }
    for (k = 0; k < ACULA_MODEL_NUM_LABELS; k++) {
        p[k] /= sum;
    }
}

/* The window is full: score it, report it, slide by one model hop. */
static int score_window(acula_window_callback_t on_window, void *user)
{
    int k, status;
    acula_app_quantize_window((const float (*)[ACULA_N_MELS])window, model_input);
    status = acula_model_invoke(model_input, result.embedding, result.logits);
    if (status != ACULA_MODEL_OK) {
        return status;
    }
    result.index = windows_done++;
    softmax(result.logits, result.probabilities);
    for (k = 0; k < ACULA_MODEL_NUM_LABELS; k++) {
        probability_sum[k] += result.probabilities[k];
    }
    if (on_window != NULL) {
        on_window(&result, user);
    }
    memmove(window[0], window[ACULA_WINDOW_HOP_FRAMES],
            sizeof(window[0]) * (ACULA_WINDOW_FRAMES - ACULA_WINDOW_HOP_FRAMES));
    filled = ACULA_WINDOW_FRAMES - ACULA_WINDOW_HOP_FRAMES;
    return ACULA_MODEL_OK;
}

int acula_app_push_i16(const int16_t *samples, int n, acula_window_callback_t on_window, void *user)
{
    int done = 0, i = 0;
    if (n < 0 || (samples == NULL && n > 0)) {
        return ACULA_APP_ERR_ARG;
    }
    /* One front-end hop at a time: each push completes at most one frame, so a window is scored the moment its
     * last frame arrives and the window buffer never needs room for more. */
    while (i < n) {
        int chunk = n - i < ACULA_HOP_LENGTH ? n - i : ACULA_HOP_LENGTH;
        int k = acula_frontend_push_i16(&frontend, samples + i, chunk, window[filled], ACULA_WINDOW_FRAMES - filled);
        if (k < 0) {
            return k;
        }
        i += chunk;
        samples_seen += chunk;
        filled += k;
        if (filled == ACULA_WINDOW_FRAMES) {
            int status = score_window(on_window, user);
            if (status != ACULA_MODEL_OK) {
                return status;
            }
            done++;
        }
    }
    return done;
}

int acula_app_finish(acula_window_callback_t on_window, void *user)
{
    static const int16_t zeros[ACULA_HOP_LENGTH];
    int done = 0;
    if (windows_done > 0 || samples_seen == 0) {
        return 0;
    }
    while (done == 0) {
        done = acula_app_push_i16(zeros, ACULA_HOP_LENGTH, on_window, user);
        if (done < 0) {
            return done;
        }
    }
    return done;
}

int acula_app_decision(float *probabilities)
{
    int k;
    if (windows_done == 0) {
        return -1;
    }
    if (probabilities != NULL) {
        for (k = 0; k < ACULA_MODEL_NUM_LABELS; k++) {
            probabilities[k] = (float)(probability_sum[k] / windows_done);
        }
    }
    return (float)(probability_sum[ACULA_MODEL_NUM_LABELS - 1] / windows_done) >= ACULA_MODEL_THRESHOLD;
}
