# The original DeepMath README's commands, verbatim. tests/e2e/test_paper_commands.py checks that each
# one gets past configuration and argument parsing (network and GPU library stubbed at their seams).
python -m deep_math.vllm_serve_agent \
  --model Qwen/Qwen3-4B-Thinking-2507 \
  --tensor_parallel_size 1 \
  --data_parallel_size 6 \
  --config configs/vllm_agent_server_4B.yaml \
  --max_steps 50 \
  --max_agent_output 5000

accelerate launch --config_file configs/zero2.yaml --num_processes 2 training.py

python inference.py +model.use_vllm=true model.generation.max_new_tokens=20000 \
  model.generation.do_sample=true model.generation.temperature=0.6 \
  model.model_name_or_path=Qwen/Qwen3-4B-Thinking-2507 hf_tag=HuggingFaceH4/MATH-500 \
  generated_file=baseline-MATH500.jsonl

python inference.py +model.use_vllm=true +model.math_agent=true +model.examples=deep_math/fewshot.txt \
  model.generation.max_new_tokens=3000 +model.max_agent_output=20000 +model.max_steps=50 \
  model.model_name_or_path=Qwen/Qwen3-4B-Thinking-2507 hf_tag=HuggingFaceH4/MATH-500 \
  generated_file=agent-MATH500.jsonl

python inference.py +model.use_vllm=true +model.math_agent=true model.lora_path=/PATH/TO/CHECKPOINT \
  +model.vllm_params.max_lora_rank=32 model.generation.max_new_tokens=3000 \
  +model.max_agent_output=20000 +model.max_steps=50 \
  model.model_name_or_path=Qwen/Qwen3-4B-Thinking-2507 hf_tag=HuggingFaceH4/MATH-500 \
  generated_file=trained-agent-MATH500.jsonl

python evaluation.py generated_file=baseline-MATH500.jsonl,agent-MATH500.jsonl,trained-agent-MATH500.jsonl
