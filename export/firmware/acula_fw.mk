# Makefile of a firmware project written by `acula-edge firmware`: the bundle's model, the C front-end, the
# TensorFlow Lite Micro interpreter and the harness acula_fw_main.c, linked for an Arm Cortex-M.
#
#   make TFLM_DIR=/path/to/tflite-micro                 # -> build/cortex-m4-cmsis_nn-float/acula_fw.elf (+ .map)
#   make TFLM_DIR=... TARGET_ARCH=cortex-m7 OPTIMIZED_KERNEL_DIR= FRONTEND=q15
#   make TFLM_DIR=... run ARGS="windows in.i8 out.i8"   # under qemu-arm (user mode, semihosting)
#
# TFLM_DIR is a tflite-micro tree whose library was built for the same target first, e.g.
#   make -f tensorflow/lite/micro/tools/make/Makefile TARGET=cortex_m_qemu TARGET_ARCH=cortex-m4 \
#        OPTIMIZED_KERNEL_DIR=cmsis_nn microlite
# (OPTIMIZED_KERNEL_DIR empty: TFLM's reference kernels.) The compile flags below are that target's
# (tensorflow/lite/micro/tools/make/targets/cortex_m_qemu_makefile.inc): soft float, semihosting (rdimon).
# On a board, link your own startup code and linker script instead of SPECS=rdimon.specs.

TFLM_DIR ?= $(error set TFLM_DIR=/path/to/tflite-micro (a tree with the microlite library built for TARGET_ARCH))
TARGET_ARCH ?= cortex-m4
OPTIMIZED_KERNEL_DIR ?= cmsis_nn
FRONTEND ?= float
CROSS ?= arm-none-eabi-
SPECS ?= rdimon.specs
QEMU ?= qemu-arm

KERNELS := $(if $(OPTIMIZED_KERNEL_DIR),$(OPTIMIZED_KERNEL_DIR),reference)
TFLM_GEN ?= $(TFLM_DIR)/gen/cortex_m_qemu_$(TARGET_ARCH)_default$(if $(OPTIMIZED_KERNEL_DIR),_$(OPTIMIZED_KERNEL_DIR))_gcc
TFLM_LIB ?= $(TFLM_GEN)/lib/libtensorflow-microlite.a
DOWNLOADS := $(TFLM_DIR)/tensorflow/lite/micro/tools/make/downloads
BUILD ?= build/$(TARGET_ARCH)-$(KERNELS)-$(FRONTEND)
# TFLM kernel files (e.g. "conv depthwise_conv") compiled from TFLM_DIR's portable reference sources and linked
# ahead of the library, so they replace its optimized (CMSIS-NN) versions of those ops: an A/B comparison of the
# optimized kernels without a second library build.
REFERENCE_KERNELS ?=
# This model's ops whose CMSIS-NN kernel is not used (written by `acula-edge firmware`; the reference kernel is
# compiled from TFLM_DIR and linked ahead of the library instead). TRANSPOSE: CMSIS-NN's int8 transpose handles
# at most 4 dimensions, and TFLM's CMSIS-NN wrapper ignores that check's failure: the output is left unwritten
# and Invoke() returns OK (only "transpose.cc:30 size <= 4 was not true." on the debug log). A student's
# space-to-depth stem is a 5-D transpose. The reference transpose only moves bytes.
MODEL_REFERENCE_KERNELS := @MODEL_REFERENCE_KERNELS@
LINKED_REFERENCE_KERNELS := $(sort $(REFERENCE_KERNELS) $(if $(OPTIMIZED_KERNEL_DIR),$(MODEL_REFERENCE_KERNELS)))

ifeq ($(FRONTEND),q15)
FRONTEND_DEFS := -DACULA_Q15=1
else ifeq ($(FRONTEND),float)
FRONTEND_DEFS :=
else
$(error FRONTEND must be float or q15, got '$(FRONTEND)')
endif

CC := $(CROSS)gcc
CXX := $(CROSS)g++
SIZE := $(CROSS)size
ARCH_FLAGS := -mcpu=$(TARGET_ARCH) -mthumb -mfloat-abi=soft -mfpu=auto -mlittle-endian
COMMON_FLAGS := $(ARCH_FLAGS) -Os -ffunction-sections -fdata-sections -fomit-frame-pointer -funsigned-char \
    --specs=$(SPECS) -DTF_LITE_STATIC_MEMORY -DTF_LITE_MCU_DEBUG_LOG $(FRONTEND_DEFS) -I.
CFLAGS := $(COMMON_FLAGS) -std=c99 -Wall -Wextra -Werror -pedantic
CXXFLAGS := $(COMMON_FLAGS) -std=c++17 -fno-rtti -fno-exceptions -fno-threadsafe-statics -Wall -Wextra \
    -Wno-unused-parameter -I$(TFLM_DIR) -I$(DOWNLOADS)/flatbuffers/include -I$(DOWNLOADS)/gemmlowp \
    -I$(DOWNLOADS)/ruy
LDFLAGS := $(ARCH_FLAGS) --specs=$(SPECS) -Wl,--gc-sections -Wl,-Map=$(BUILD)/acula_fw.map

C_SRCS := acula_frontend.c acula_app.c model_data.c acula_fw_main.c
CXX_SRCS := acula_model.cc
OBJS := $(C_SRCS:%.c=$(BUILD)/%.o) $(CXX_SRCS:%.cc=$(BUILD)/%.o) $(LINKED_REFERENCE_KERNELS:%=$(BUILD)/reference_%.o)
HEADERS := $(wildcard *.h)

.PHONY: all size run clean
all: $(BUILD)/acula_fw.elf

$(BUILD)/%.o: %.c $(HEADERS) Makefile
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cc $(HEADERS) Makefile
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/reference_%.o: $(TFLM_DIR)/tensorflow/lite/micro/kernels/%.cc Makefile
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/acula_fw.elf: $(OBJS) $(TFLM_LIB)
	$(CXX) $(LDFLAGS) $(OBJS) $(TFLM_LIB) -lm -o $@

$(TFLM_LIB):
	$(error $(TFLM_LIB) is missing: build TFLM's microlite library for TARGET_ARCH=$(TARGET_ARCH) OPTIMIZED_KERNEL_DIR=$(OPTIMIZED_KERNEL_DIR) first (see the top of this Makefile))

size: $(BUILD)/acula_fw.elf
	$(SIZE) -A $<

run: $(BUILD)/acula_fw.elf
	$(QEMU) -cpu $(TARGET_ARCH) $< $(ARGS)

clean:
	rm -rf $(BUILD)
