#!/usr/bin/env bash
# Reproduce benchmarks/RESULTS_bench.md: export a 'small' DS-CNN student (seeded random weights: latency does not
# depend on the weights) to ONNX, LiteRT and ExecuTorch in fp32 and int8, then run
#   acula-edge bench latency   (all bundles interleaved, 1 thread)
#   acula-edge bench accuracy  (synthetic heart sounds, per site; the untrained model's AUROC means nothing, the
#                               fp32 vs int8 vs runtime agreement does)
#
#   benchmarks/bench_cli.sh [WORK_DIR]        (default /tmp/acula-bench; nothing is written inside the repo)
#
# Environment: RUNS (default 300), MIN_SECONDS (default 20), PY (default .venv/bin/python beside this repo).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-/tmp/acula-bench}"
PY="${PY:-$REPO/.venv/bin/python}"
CLI="$(dirname "$PY")/acula-edge"
RUNS="${RUNS:-300}"
MIN_SECONDS="${MIN_SECONDS:-20}"
CALIB="synthetic:heart?n=24&seed=5"
DATA="synthetic:heart?n=80&seed=11"
mkdir -p "$WORK"

if [ ! -f "$WORK/small-ckpt/config.json" ]; then
  "$PY" - "$WORK/small-ckpt" <<'PY'
import sys
import torch
from acula_edge.checkpoint import CheckpointInfo, save_checkpoint
from acula_edge.distill.students import DSCNNStudent, count_parameters, student_config
from acula_edge.frontend import preset

torch.manual_seed(0)
frontend, windowing = preset("heart")
model = DSCNNStudent(student_config("small", embedding_dim=384, num_classes=2)).eval()
info = CheckpointInfo(kind="student", architecture="acula_edge.distill.students:DSCNNStudent",
                      model_config=model.config_dict(), frontend=frontend, windowing=windowing,
                      labels=("normal", "abnormal"), embedding_dim=384,
                      extra={"note": "untrained: seeded random weights, for latency",
                             "parameters": count_parameters(model)})
save_checkpoint(model, info, sys.argv[1])
print(f"small student: {count_parameters(model)} parameters -> {sys.argv[1]}")
PY
fi

BUNDLES=()
for target in onnx tflite executorch; do
  for q in none int8; do
    p=$([ "$q" = none ] && echo fp32 || echo int8)
    out="$WORK/small/$target-$p"
    if [ ! -f "$out/manifest.json" ]; then
      extra=()
      [ "$q" = int8 ] && extra=(--calib-data "$CALIB")
      "$CLI" export "$WORK/small-ckpt" --target "$target" --quantize "$q" "${extra[@]}" --out "$out"
    fi
    BUNDLES+=("$out")
  done
done

"$CLI" bench latency "${BUNDLES[@]}" --threads 1 --runs "$RUNS" --min-seconds "$MIN_SECONDS" \
  --json-out "$WORK/latency.json" --markdown | tee "$WORK/latency.md"
"$CLI" bench accuracy "${BUNDLES[@]}" --data "$DATA" --group-by subset --json-out "$WORK/accuracy.json" \
  --plots "$WORK/plots" --report "$WORK/report.md" --latency-json "$WORK/latency.json" --markdown \
  | tee "$WORK/accuracy.md"
echo "report: $WORK/report.md"
