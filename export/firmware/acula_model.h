/* acula_model.h: the bundle's int8 model on TensorFlow Lite Micro, behind a C API (one model per firmware).
 *
 * int8 window in -> int8 embedding and logits out, once per model hop:
 *   acula_model_init();                                   // once: op resolver, interpreter, tensor arena
 *   acula_model_invoke(window_q, embedding_q, logits_q);  // window_q: ACULA_MODEL_INPUT_SIZE int8 values
 *
 * Quantization (model_data.h): input q = clamp(round(x / ACULA_MODEL_INPUT_SCALE) + ACULA_MODEL_INPUT_ZERO_POINT,
 * -128, 127) of the normalised log-mel window, frames x mels, row-major; outputs real = scale * (q - zero_point).
 * Only the ops the model uses are registered (ACULA_MODEL_OPS). The arena is a static buffer of
 * ACULA_MODEL_ARENA_BYTES (the bundle's measured size; -DACULA_ARENA_BYTES=N overrides it); no heap is used.
 */
#ifndef ACULA_MODEL_H
#define ACULA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "model_data.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ACULA_MODEL_INPUT_SIZE (ACULA_MODEL_INPUT_FRAMES * ACULA_MODEL_INPUT_MELS) /* int8 values per window */

#define ACULA_MODEL_OK 0
#define ACULA_MODEL_ERR_SCHEMA (-1)   /* the model's flatbuffer schema is not the one TFLM was built for */
#define ACULA_MODEL_ERR_OPS (-2)      /* an op could not be registered */
#define ACULA_MODEL_ERR_ALLOCATE (-3) /* AllocateTensors failed: the arena is too small */
#define ACULA_MODEL_ERR_SHAPE (-4)    /* input / output tensors are not the int8 sizes model_data.h declares */
#define ACULA_MODEL_ERR_INVOKE (-5)   /* Invoke failed */
#define ACULA_MODEL_ERR_STATE (-6)    /* acula_model_invoke before a successful acula_model_init, or NULL args */

/* Build the op resolver and interpreter and allocate the tensors. Returns ACULA_MODEL_OK or an error above;
 * calling it again after success does nothing. */
int acula_model_init(void);

/* Run one window: copy ACULA_MODEL_INPUT_SIZE int8 values in, invoke, copy ACULA_MODEL_EMBEDDING_SIZE and
 * ACULA_MODEL_LOGITS_SIZE int8 values out. Returns ACULA_MODEL_OK or an error above. */
int acula_model_invoke(const int8_t *input, int8_t *embedding, int8_t *logits);

/* Bytes of the tensor arena the interpreter uses on this target (after acula_model_init; 0 before), and the
 * arena's size. */
size_t acula_model_arena_used_bytes(void);
size_t acula_model_arena_bytes(void);

#ifdef __cplusplus
}
#endif

#endif /* ACULA_MODEL_H */
