#!/usr/bin/env bash
# bash scripts/gpu_smoke.sh [--cpu] [--bundle DIR] [output_dir]
#
# Smoke test of the training entry point on one GPU: 2 GRPO steps of
#   accelerate launch --config_file configs/zero2.yaml training.py
# with a tiny random 2-layer model (the embedded tokenizer), LoRA, and local rollouts through the
# transformers engine (vLLM is not installable on our GPU machines). A reward that varies between
# random completions (deep_math/testing.py) is added to the paper's two, which are 0 for a random
# model, so the optimizer step really moves the adapter. Exit status 0 only if training finished,
# saved checkpoints and an adapter whose LoRA weights moved, and the adapter loads onto the GPU.
#
#   --cpu         rehearse the same run on CPU (DeepSpeed's CPU accelerator with gloo when
#                 DeepSpeed is installed), to check this script on a machine without a GPU
#   --bundle DIR  an offline bundle made by `bash scripts/offline_bundle.sh DIR` on a machine with
#                 PyPI access: its wheels are installed into output_dir/site (nothing is fetched)
#                 and its tiny model is used (the embedded model package is not needed)
# Falls back to a plain single-device accelerate config, and says so, if DeepSpeed is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
ON_CPU=0
BUNDLE=""
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu) ON_CPU=1; shift ;;
        --bundle) BUNDLE="${2:?--bundle needs a folder}"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        -*) echo "gpu_smoke: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) OUT="$1"; shift ;;
    esac
done
OUT="${OUT:-/tmp/deep_math_gpu_smoke}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
export PYTHONUNBUFFERED=1
rm -rf "$OUT/run" "$OUT/hydra"
mkdir -p "$OUT"
T0=$(date +%s)
phase() { echo "gpu_smoke: [$(( $(date +%s) - T0 )) s] $*"; }

if [[ -n "$BUNDLE" ]]; then
    [[ -d "$BUNDLE/wheels" ]] || { echo "gpu_smoke: $BUNDLE/wheels not found; make the bundle with: bash scripts/offline_bundle.sh $BUNDLE" >&2; exit 2; }
    rm -rf "$OUT/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$OUT/site" "$BUNDLE"/wheels/*.whl
    export PYTHONPATH="$(cd "$OUT/site" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
    phase "installed $(ls "$BUNDLE"/wheels/*.whl | wc -l) bundled wheels into $OUT/site"
fi

if [[ "$ON_CPU" == 1 ]]; then
    DEVICE=cpu
    export DS_ACCELERATOR=cpu
else
    DEVICE=cuda
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_smoke: no CUDA GPU visible to torch (use --cpu to rehearse on CPU)." >&2
        exit 2
    fi
fi

"$PY" - "$DEVICE" <<'PYEOF'
import importlib.metadata as md
import sys

import torch

where = torch.cuda.get_device_name(0) if sys.argv[1] == "cuda" else "CPU (rehearsal)"
versions = []
for name in ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed"):
    try:
        versions.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        versions.append(f"{name} -")
print(f"gpu_smoke: device {where} | python {sys.version.split()[0]} | " + ", ".join(versions))
PYEOF

# The sandbox first: a host where it cannot block the network (an unprivileged container
# without namespaces, seccomp or Landlock) still gets its training check, with the opt-in.
SANDBOX_OPT=()
set +e
"$PY" - <<'PYEOF'
import sys

from deep_math.sandbox import Sandbox

try:
    sandbox = Sandbox(timeout=10.0)
    status = 0
except RuntimeError as exc:
    if "cannot block the network" not in str(exc):
        raise
    print(f"gpu_smoke: WARNING {exc}")
    sandbox, status = Sandbox(timeout=10.0, allow_degraded_network=True), 3
with sandbox:
    result = sandbox.session().run("import sympy\nprint(sympy.factorint(2**32 + 1))")
    layers = sandbox.layers
print(f"gpu_smoke: sandbox ran a snippet: output={result.output.strip()!r} error={result.error!r}; "
      f"network blocked={layers.network_blocked} (netns={layers.netns}, seccomp={layers.seccomp}, "
      f"landlock_abi={layers.landlock_abi})")
sys.exit(1 if result.error else status)
PYEOF
case $? in
    0) ;;
    3) SANDBOX_OPT=(agent.allow_degraded_network=true)
       phase "this host cannot block the sandbox's network: training runs with ${SANDBOX_OPT[*]}" ;;
    *) echo "gpu_smoke: FAILED, the sandbox could not run a snippet" >&2; exit 1 ;;
esac
set -e

if [[ -n "$BUNDLE" && -f "$BUNDLE/tiny-model/config.json" ]]; then
    TINY="$BUNDLE/tiny-model"
else
    TINY="$OUT/tiny-model"
    "$PY" -m deep_math.training.tiny "$TINY"
fi
phase "tiny model at $TINY"

if "$PY" -c "import deepspeed" >/dev/null 2>&1; then
    ACCEL_CFG="configs/zero2.yaml"
    phase "using DeepSpeed ZeRO-2 ($ACCEL_CFG)"
else
    ACCEL_CFG="$OUT/single_device.yaml"
    cat > "$ACCEL_CFG" <<'YAML'
compute_environment: LOCAL_MACHINE
distributed_type: 'NO'
mixed_precision: bf16
num_machines: 1
num_processes: 1
use_cpu: false
YAML
    phase "DeepSpeed is not installed; using a plain single-device accelerate config ($ACCEL_CFG)"
fi
if [[ "$ON_CPU" == 1 ]]; then
    # A CPU copy of the config. Not `accelerate launch --cpu`: that flag bypasses the DeepSpeed
    # launcher, so the run would not test DeepSpeed at all.
    CPU_CFG="$OUT/$(basename "$ACCEL_CFG" .yaml)_cpu.yaml"
    sed -e 's/^use_cpu: .*/use_cpu: true/' -e "s/^mixed_precision: .*/mixed_precision: 'no'/" "$ACCEL_CFG" > "$CPU_CFG"
    ACCEL_CFG="$CPU_CFG"
fi

phase "training: 2 GRPO steps"
timeout 900 "$PY" -m accelerate.commands.launch --config_file "$ACCEL_CFG" --num_processes 1 --num_machines 1 \
    training.py \
    model.model_name_or_path="$TINY" \
    data.limit=4 \
    prompt.examples=null \
    agent.max_steps=2 agent.max_agent_output=64 \
    train.max_completion_length=64 \
    train.max_steps=2 train.save_steps=1 \
    train.learning_rate=1e-3 \
    '++rewards={deep_math.testing.distinct_chars:1.0}' \
    "${SANDBOX_OPT[@]}" \
    train.output_dir="$OUT/run" \
    hydra.run.dir="$OUT/hydra" \
    2>&1 | tee "$OUT/train.log"
phase "training finished"

"$PY" - "$TINY" "$OUT/run" "$DEVICE" "$ACCEL_CFG" <<'PYEOF'
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from deep_math.models import load_model

tiny, run, device, accel_cfg = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
for need in ("adapter_config.json", "checkpoint-1", "checkpoint-2"):
    if not (run / need).exists():
        raise SystemExit(f"gpu_smoke: FAILED, no {need} in {run}")
if "distributed_type: DEEPSPEED" in Path(accel_cfg).read_text():
    shards = sorted(p.name for p in (run / "checkpoint-2" / "global_step2").glob("*optim_states.pt"))
    if not shards:
        raise SystemExit("gpu_smoke: FAILED, DeepSpeed was configured but checkpoint-2 has no ZeRO optimizer shards")
    print(f"gpu_smoke: DeepSpeed engaged: checkpoint-2/global_step2 holds {shards}")
logs = [e for e in json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
        if "loss" in e]
for e in logs:
    print(f"gpu_smoke: step {e['step']}: loss {e['loss']:.4g}, grad_norm {e.get('grad_norm', float('nan')):.4g}, "
          f"reward {e.get('reward', float('nan')):.4g} (std {e.get('reward_std', float('nan')):.4g}), "
          f"temperature {e.get('temperature')}, trace errors {e.get('agent/trace_errors')}")
if len(logs) != 2 or any(e.get("agent/trace_errors") for e in logs):
    raise SystemExit("gpu_smoke: FAILED, expected 2 logged steps without failed traces")
lora_b = {k: v for k, v in load_file(str(run / "adapter_model.safetensors")).items() if "lora_B" in k}
moved = max(float(v.float().abs().max()) for v in lora_b.values())
print(f"gpu_smoke: {len(lora_b)} LoRA B matrices (initialized to 0), largest |entry| after training {moved:.3g}")
if not moved > 0:
    raise SystemExit("gpu_smoke: FAILED, the adapter did not move (no optimizer update reached it)")
model = load_model(tiny, lora_path=str(run), device=device)
param = next(model.parameters())
print(f"gpu_smoke: the adapter loads onto the base model ({type(model).__name__}, {param.dtype} on {param.device})")
PYEOF
phase "OK (accelerate config: $ACCEL_CFG)"
