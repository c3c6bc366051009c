// acula_model.cc: TensorFlow Lite Micro interpreter for the bundle's model (see acula_model.h).
//
// The resolver registers exactly the ops listed in model_data.h (ACULA_MODEL_OPS), so only their kernels are
// linked: with OPTIMIZED_KERNEL_DIR=cmsis_nn the library's CMSIS-NN kernels, otherwise TFLM's reference ones.
// Resolver and interpreter are constructed in static storage on the first acula_model_init() (placement new), so
// nothing depends on C++ static-initialisation order and nothing touches the heap.
#include "acula_model.h"

#include <string.h>

#include <new>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#ifndef ACULA_ARENA_BYTES
#define ACULA_ARENA_BYTES ACULA_MODEL_ARENA_BYTES
#endif

static_assert(ACULA_MODEL_INPUT_INT8 == 1, "the firmware runs full-int8 models (int8 input tensor)");
static_assert(ACULA_MODEL_EMBEDDING_INT8 == 1 && ACULA_MODEL_LOGITS_INT8 == 1,
              "the firmware runs full-int8 models (int8 embedding and logits outputs)");

namespace {

using Resolver = tflite::MicroMutableOpResolver<ACULA_MODEL_NUM_OPS>;

alignas(16) uint8_t tensor_arena[ACULA_ARENA_BYTES];
alignas(Resolver) uint8_t resolver_storage[sizeof(Resolver)];
alignas(tflite::MicroInterpreter) uint8_t interpreter_storage[sizeof(tflite::MicroInterpreter)];
tflite::MicroInterpreter *interpreter = nullptr;

int register_ops(Resolver &resolver) {
#define ACULA_ADD_OP(name) \
    if (resolver.Add##name() != kTfLiteOk) return ACULA_MODEL_ERR_OPS;
    ACULA_MODEL_OPS(ACULA_ADD_OP)
#undef ACULA_ADD_OP
    return ACULA_MODEL_OK;
}

bool int8_tensor(const TfLiteTensor *t, size_t bytes) {
    return t != nullptr && t->type == kTfLiteInt8 && t->bytes == bytes;
}

}  // namespace

extern "C" int acula_model_init(void) {
    if (interpreter != nullptr) {
        return ACULA_MODEL_OK;
    }
    const tflite::Model *model = tflite::GetModel(acula_model_data);
    if (model->version() != TFLITE_SCHEMA_VERSION) {
        return ACULA_MODEL_ERR_SCHEMA;
    }
    Resolver *resolver = new (resolver_storage) Resolver();
    int status = register_ops(*resolver);
    if (status != ACULA_MODEL_OK) {
        return status;
    }
    tflite::MicroInterpreter *it =
        new (interpreter_storage) tflite::MicroInterpreter(model, *resolver, tensor_arena, sizeof(tensor_arena));
    if (it->AllocateTensors() != kTfLiteOk) {
        return ACULA_MODEL_ERR_ALLOCATE;
    }
    if (it->inputs_size() != 1 || !int8_tensor(it->input(0), ACULA_MODEL_INPUT_SIZE) ||
        !int8_tensor(it->output(ACULA_MODEL_EMBEDDING_OUTPUT_INDEX), ACULA_MODEL_EMBEDDING_SIZE) ||
        !int8_tensor(it->output(ACULA_MODEL_LOGITS_OUTPUT_INDEX), ACULA_MODEL_LOGITS_SIZE)) {
        return ACULA_MODEL_ERR_SHAPE;
    }
    interpreter = it;
    return ACULA_MODEL_OK;
}

extern "C" int acula_model_invoke(const int8_t *input, int8_t *embedding, int8_t *logits) {
    if (interpreter == nullptr || input == nullptr || embedding == nullptr || logits == nullptr) {
        return ACULA_MODEL_ERR_STATE;
    }
    memcpy(interpreter->input(0)->data.int8, input, ACULA_MODEL_INPUT_SIZE);
    if (interpreter->Invoke() != kTfLiteOk) {
        return ACULA_MODEL_ERR_INVOKE;
    }
    memcpy(embedding, interpreter->output(ACULA_MODEL_EMBEDDING_OUTPUT_INDEX)->data.int8, ACULA_MODEL_EMBEDDING_SIZE);
    memcpy(logits, interpreter->output(ACULA_MODEL_LOGITS_OUTPUT_INDEX)->data.int8, ACULA_MODEL_LOGITS_SIZE);
    return ACULA_MODEL_OK;
}

extern "C" size_t acula_model_arena_used_bytes(void) {
    return interpreter == nullptr ? 0 : interpreter->arena_used_bytes();
}

extern "C" size_t acula_model_arena_bytes(void) { return sizeof(tensor_arena); }
