/* Host-side sketch of the firmware calling sequence: audio in, log-mel frames out, a model call per window.
 *
 *   acula_frontend_demo f32 < audio.f32    (raw float32 PCM at ACULA_SAMPLE_RATE, native byte order)
 *   acula_frontend_demo s16 < audio.s16    (raw int16 PCM)
 *
 * On a stethoscope the stdin reads are the audio DMA callback, and run_model() is TensorFlow Lite Micro's
 * interpreter.Invoke(). TFLM is NOT compiled here: run_model() is a placeholder that prints the mean of the
 * window it would have fed to the model, so the front-end and the windowing can be checked on a PC.
 *
 * Needs frontend_params.h generated with a Windowing (ACULA_WINDOW_FRAMES, ACULA_WINDOW_HOP_FRAMES), or those
 * two given with -D. Everything is static: no heap, nothing large on the stack.
 */
#include <stdio.h>
#include <string.h>

#include "acula_frontend.h"

#if !defined(ACULA_WINDOW_FRAMES) || !defined(ACULA_WINDOW_HOP_FRAMES)
#error "define ACULA_WINDOW_FRAMES and ACULA_WINDOW_HOP_FRAMES (-D..., or generate frontend_params.h with a Windowing)"
#endif
#if ACULA_WINDOW_HOP_FRAMES > ACULA_WINDOW_FRAMES
#error "this example slides overlapping or adjacent windows only (window hop <= window length)"
#endif

static acula_frontend_t frontend;                              /* ACULA_RAM_BYTES */
static float window[ACULA_WINDOW_FRAMES][ACULA_N_MELS];        /* model-input frames, oldest first */
static float samples_f32[ACULA_HOP_LENGTH];                    /* one hop of audio: the "DMA buffer" */
static int16_t samples_s16[ACULA_HOP_LENGTH];

/* Placeholder for the model. In firmware this is where you would:
 *   1. copy `frames` into interpreter.input(0): float models take them as they are; int8 models take
 *      q = round(x / scale) + zero_point with the input tensor's scale and zero point;
 *      with ACULA_NORM_GLOBAL == 0 (per-window normalisation), first scale the window to zero mean and unit
 *      standard deviation (std floored at 1e-5) while copying, as acula_edge.features.normalise_window does;
 *      with ACULA_NORM_PER_BAND == 1, subtract each mel band's mean over the window first, then divide by
 *      the window's standard deviation;
 *   2. call interpreter.Invoke();
 *   3. read interpreter.output(0) (class scores or an embedding).
 * Here it prints the window's mean log-mel value instead. */
static void run_model(const float frames[ACULA_WINDOW_FRAMES][ACULA_N_MELS], long index, long start_frame)
{
    double sum = 0.0;
    int t, m;
    for (t = 0; t < ACULA_WINDOW_FRAMES; t++) {
        for (m = 0; m < ACULA_N_MELS; m++) {
            sum += (double)frames[t][m];
        }
    }
    printf("window %ld start_frame %ld mean %.6f\n", index, start_frame,
           sum / ((double)ACULA_WINDOW_FRAMES * ACULA_N_MELS));
}

int main(int argc, char **argv)
{
    int use_s16;
    int filled = 0;          /* frames currently in window[] */
    long frames_total = 0;   /* frames produced so far */
    long windows_total = 0;

    if (argc != 2 || (strcmp(argv[1], "f32") != 0 && strcmp(argv[1], "s16") != 0)) {
        fprintf(stderr, "usage: %s f32|s16 < raw_pcm  (mono, %d Hz)\n", argv[0], ACULA_SAMPLE_RATE);
        return 2;
    }
    use_s16 = strcmp(argv[1], "s16") == 0;

    acula_frontend_init(&frontend);
    for (;;) {
        size_t n = use_s16 ? fread(samples_s16, sizeof(int16_t), ACULA_HOP_LENGTH, stdin)
                           : fread(samples_f32, sizeof(float), ACULA_HOP_LENGTH, stdin);
        int k;
        if (n == 0) {
            break;
        }
        /* New frames go straight into the window, after the frames already there. */
        k = use_s16 ? acula_frontend_push_i16(&frontend, samples_s16, (int)n, window[filled],
                                              ACULA_WINDOW_FRAMES - filled)
                    : acula_frontend_push(&frontend, samples_f32, (int)n, window[filled],
                                          ACULA_WINDOW_FRAMES - filled);
        if (k < 0) {
            fprintf(stderr, "acula_frontend_push failed (%d)\n", k);
            return 1;
        }
        filled += k;
        frames_total += k;
        if (filled == ACULA_WINDOW_FRAMES) {
            run_model((const float (*)[ACULA_N_MELS])window, windows_total,
                      frames_total - ACULA_WINDOW_FRAMES);
            windows_total++;
            /* Slide by one model hop: keep the newest ACULA_WINDOW_FRAMES - ACULA_WINDOW_HOP_FRAMES frames. */
            memmove(window[0], window[ACULA_WINDOW_HOP_FRAMES],
                    sizeof(window[0]) * (ACULA_WINDOW_FRAMES - ACULA_WINDOW_HOP_FRAMES));
            filled = ACULA_WINDOW_FRAMES - ACULA_WINDOW_HOP_FRAMES;
        }
    }
    if (ferror(stdin)) {
        perror("reading stdin");
        return 1;
    }
    printf("frames %ld windows %ld\n", frames_total, windows_total);
    return 0;
}
