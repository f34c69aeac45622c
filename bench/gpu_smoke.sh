#!/usr/bin/env bash
# bash bench/gpu_smoke.sh [output_dir]
#
# GPU smoke test of the training entry point: 2 GRPO steps of
#   accelerate launch --config_file configs/zero2.yaml training.py
# on one CUDA GPU with a tiny random 2-layer model (embedded tokenizer), LoRA, and local rollouts
# through the transformers engine (vLLM is not installable on our GPU machines). If DeepSpeed is
# not importable, falls back to a plain single-GPU accelerate config and says so.
# Exit status 0 only if training finished and saved a peft adapter.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-/tmp/deep_math_gpu_smoke}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_smoke: no CUDA GPU visible to torch; nothing to test." >&2
    exit 2
fi
"$PY" -c "import torch; print('gpu_smoke: GPU', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

TINY="$OUT/tiny-model"
"$PY" - "$TINY" <<'PYEOF'
import sys
from pathlib import Path

from deep_math.models import load_tokenizer
from deep_math.training.tiny import tiny_model_dir

path = tiny_model_dir(load_tokenizer(None), Path(sys.argv[1]))
print(f"gpu_smoke: tiny model at {path}")
PYEOF

if "$PY" -c "import deepspeed" >/dev/null 2>&1; then
    ACCEL_CFG="configs/zero2.yaml"
    echo "gpu_smoke: using DeepSpeed ZeRO-2 ($ACCEL_CFG, deepspeed $("$PY" -c 'import deepspeed; print(deepspeed.__version__)'))"
else
    ACCEL_CFG="$OUT/single_gpu.yaml"
    cat > "$ACCEL_CFG" <<'YAML'
compute_environment: LOCAL_MACHINE
distributed_type: 'NO'
mixed_precision: bf16
num_machines: 1
num_processes: 1
machine_rank: 0
gpu_ids: '0'
use_cpu: false
YAML
    echo "gpu_smoke: DeepSpeed is not installed; using a plain single-GPU accelerate config ($ACCEL_CFG)"
fi

START=$(date +%s)
timeout 900 "$PY" -m accelerate.commands.launch --config_file "$ACCEL_CFG" --num_processes 1 --num_machines 1 \
    training.py \
    model.model_name_or_path="$TINY" \
    data.limit=4 \
    prompt.examples=null \
    agent.max_steps=2 agent.max_agent_output=64 \
    train.max_completion_length=64 \
    train.max_steps=2 train.save_steps=1 \
    train.output_dir="$OUT/run" \
    hydra.run.dir="$OUT/hydra" \
    2>&1 | tee "$OUT/train.log"
echo "gpu_smoke: training took $(( $(date +%s) - START )) s"

test -f "$OUT/run/adapter_config.json" || { echo "gpu_smoke: FAILED, no adapter in $OUT/run" >&2; exit 1; }
test -d "$OUT/run/checkpoint-2" || { echo "gpu_smoke: FAILED, no checkpoint-2 in $OUT/run" >&2; exit 1; }
"$PY" - "$TINY" "$OUT/run" <<'PYEOF'
import sys

from deep_math.models import load_model

model = load_model(sys.argv[1], lora_path=sys.argv[2], device="cuda")
print(f"gpu_smoke: adapter loads onto the base model ({type(model).__name__} on {next(model.parameters()).device})")
PYEOF
echo "gpu_smoke: OK (accelerate config: $ACCEL_CFG)"
