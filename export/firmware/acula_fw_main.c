/* acula_fw_main.c: a test and measurement harness for the firmware application, run under an emulator.
 *
 * Built by the generated Makefile for TFLM's cortex_m_qemu target (semihosting: files and stdout are the host's):
 *   qemu-arm -cpu cortex-m4 acula_fw.elf windows IN.i8 OUT.i8     int8 model windows in, int8 outputs out
 *   qemu-arm -cpu cortex-m4 acula_fw.elf audio IN.s16 OUT.bin [BLOCK]
 *                                                                  16-bit PCM in (BLOCK samples per push, default
 *                                                                  one model hop), per-window results out
 *   qemu-arm -cpu cortex-m4 acula_fw.elf frontend IN.s16              the C front-end alone (for its cost)
 * windows: IN holds N windows of ACULA_MODEL_INPUT_SIZE int8 values; OUT gets, per window,
 *   ACULA_MODEL_EMBEDDING_SIZE then ACULA_MODEL_LOGITS_SIZE int8 values.
 * audio: OUT gets, per window, the embedding and logits (int8) and the probabilities (float32, little-endian).
 * frontend prints "frames N". The others print "arena_bytes A arena_used U stack_used S windows N" (U: the interpreter's arena_used_bytes on this
 * target; S: the deepest stack reached, found by painting the stack below main's frame) and audio adds
 * "decision D p0 p1 ...". A firmware calls the same acula_app / acula_model functions from its audio interrupt.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acula_app.h"

#define STACK_PROBE_BYTES (64 * 1024) /* painted below main's frame; the measured depth must stay below this */
#define STACK_PAINT 0xA5u
#define HOP_SAMPLES (ACULA_WINDOW_HOP_FRAMES * ACULA_HOP_LENGTH) /* one model hop of audio */

static int8_t window_in[ACULA_MODEL_INPUT_SIZE];
static int8_t embedding[ACULA_MODEL_EMBEDDING_SIZE];
static int8_t logits[ACULA_MODEL_LOGITS_SIZE];
static int16_t block[HOP_SAMPLES];
static acula_frontend_t frontend_only;
static float frame[ACULA_N_MELS];
static uintptr_t stack_top; /* an address inside stack_paint's frame: just below main's */

/* Paint the stack below the caller's frame; stack_depth() later finds the lowest byte that was overwritten.
 * Addresses are handled as integers: the painted bytes belong to no C object. */
static void __attribute__((noinline)) stack_paint(void)
{
    long i;
    stack_top = (uintptr_t)__builtin_frame_address(0);
    for (i = 0; i < STACK_PROBE_BYTES; i++) {
        *(volatile unsigned char *)(stack_top - 256 - (uintptr_t)i) = STACK_PAINT;
    }
}

static long stack_depth(void)
{
    uintptr_t low = stack_top - 256 - (STACK_PROBE_BYTES - 1);
    long i;
    for (i = 0; i < STACK_PROBE_BYTES && *(volatile unsigned char *)(low + (uintptr_t)i) == STACK_PAINT; i++) {
    }
    return (long)(stack_top - (low + (uintptr_t)i)) + 1;
}

static FILE *open_or_die(const char *path, const char *mode)
{
    FILE *f = fopen(path, mode);
    if (f == NULL) {
        printf("error: cannot open %s\n", path);
        exit(3);
    }
    return f;
}

static void report(long windows)
{
    printf("arena_bytes %lu arena_used %lu stack_used %ld windows %ld\n", (unsigned long)acula_model_arena_bytes(),
           (unsigned long)acula_model_arena_used_bytes(), stack_depth(), windows);
}

static int run_windows(const char *in_path, const char *out_path)
{
    FILE *in = open_or_die(in_path, "rb");
    FILE *out = open_or_die(out_path, "wb");
    long n = 0;
    int status = acula_model_init();
    if (status != ACULA_MODEL_OK) {
        printf("error: acula_model_init %d\n", status);
        return 1;
    }
    while (fread(window_in, 1, sizeof(window_in), in) == sizeof(window_in)) {
        status = acula_model_invoke(window_in, embedding, logits);
        if (status != ACULA_MODEL_OK) {
            printf("error: acula_model_invoke %d at window %ld\n", status, n);
            return 1;
        }
        fwrite(embedding, 1, sizeof(embedding), out);
        fwrite(logits, 1, sizeof(logits), out);
        n++;
    }
    fclose(in);
    fclose(out);
    report(n);
    return 0;
}

static void write_window(const acula_window_result_t *r, void *user)
{
    FILE *out = (FILE *)user;
    fwrite(r->embedding, 1, sizeof(r->embedding), out);
    fwrite(r->logits, 1, sizeof(r->logits), out);
    fwrite(r->probabilities, sizeof(float), ACULA_MODEL_NUM_LABELS, out);
}

static int run_audio(const char *in_path, const char *out_path, int block_samples)
{
    FILE *in = open_or_die(in_path, "rb");
    FILE *out = open_or_die(out_path, "wb");
    float p[ACULA_MODEL_NUM_LABELS];
    long windows = 0;
    size_t n;
    int k, decision, status = acula_app_init();
    if (status != ACULA_MODEL_OK) {
        printf("error: acula_app_init %d\n", status);
        return 1;
    }
    while ((n = fread(block, sizeof(int16_t), (size_t)block_samples, in)) > 0) {
        k = acula_app_push_i16(block, (int)n, write_window, out);
        if (k < 0) {
            printf("error: acula_app_push_i16 %d\n", k);
            return 1;
        }
        windows += k;
    }
    k = acula_app_finish(write_window, out);
    if (k < 0) {
        printf("error: acula_app_finish %d\n", k);
        return 1;
    }
    windows += k;
    fclose(in);
    fclose(out);
    report(windows);
    decision = acula_app_decision(p);
    printf("decision %d", decision);
    for (k = 0; decision >= 0 && k < ACULA_MODEL_NUM_LABELS; k++) {
        printf(" %.9g", (double)p[k]);
    }
    printf("\n");
    return 0;
}

static int run_frontend(const char *in_path)
{
    FILE *in = open_or_die(in_path, "rb");
    long frames = 0;
    int n;
    acula_frontend_init(&frontend_only);
    /* one front-end hop per push: at most one frame each */
    while ((n = (int)fread(block, sizeof(int16_t), ACULA_HOP_LENGTH, in)) > 0) {
        int k = acula_frontend_push_i16(&frontend_only, block, n, frame, 1);
        if (k < 0) {
            printf("error: acula_frontend_push_i16 %d\n", k);
            return 1;
        }
        frames += k;
    }
    fclose(in);
    printf("frames %ld\n", frames);
    return 0;
}

int main(int argc, char **argv)
{
    stack_paint();
    if (argc == 4 && strcmp(argv[1], "windows") == 0) {
        return run_windows(argv[2], argv[3]);
    }
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "audio") == 0) {
        int b = argc == 5 ? atoi(argv[4]) : HOP_SAMPLES;
        if (b < 1 || b > HOP_SAMPLES) {
            printf("error: BLOCK must be 1..%d samples\n", HOP_SAMPLES);
            return 2;
        }
        return run_audio(argv[2], argv[3], b);
    }
    if (argc == 3 && strcmp(argv[1], "frontend") == 0) {
        return run_frontend(argv[2]);
    }
    printf("usage: %s windows IN.i8 OUT.i8 | audio IN.s16 OUT.bin [BLOCK] | frontend IN.s16\n", argc > 0 ? argv[0] : "acula_fw");
    return 2;
}
