"""Rebuild tir_corpus.jsonl from the public ToRA repository (see README.md in this folder).

    git clone https://github.com/microsoft/ToRA /tmp/ToRA
    python tests/sandbox/tir_corpus/make_tir_corpus.py /tmp/ToRA > tests/sandbox/tir_corpus/tir_corpus.jsonl

Each line is one trace: its source (repository, path, commit, model), the problem id, and the
trace's code blocks in order with the output block that followed each one in the trace.
"""

from __future__ import annotations

import json
import subprocess
import sys

REPO = "microsoft/ToRA"
# (path, commit of that file's last change, short name, model that wrote the code, which traces)
SOURCES = [
    ("data/tora/examples.jsonl", "29c71cdbd3cbd0f151d4091c3fd8ac8fb3192129", "tora-corpus",
     "ToRA-Corpus trajectory (GPT-4 written, outputs from ToRA's executor)", "all"),
    ("src/outputs/llm-agents/tora-code-34b-v1.0/gsm8k/test_tora_-1_seed0_t0.0_s0_e1319.jsonl",
     "aeb21126d28347f595d87f2822cb92bfe32f00e8", "tora-code-34b", "ToRA-Code-34B v1.0, greedy", "sample"),
    ("src/outputs/llm-agents/tora-70b-v1.0/gsm8k/test_tora_-1_seed0_t0.0_s0_e1319.jsonl",
     "aeb21126d28347f595d87f2822cb92bfe32f00e8", "tora-70b", "ToRA-70B v1.0, greedy", "sample"),
]  # fmt: skip
SAMPLE_EVERY = 150  # GSM8K outputs: every 150th problem, plus every trace whose output is an error


def code_output_pairs(text: str) -> list[tuple[str, str]]:
    """(code, recorded output) for each ```python block followed by an ```output block."""
    lines, pairs, i = text.split("\n"), [], 0
    while i < len(lines):
        if not lines[i].startswith("```python"):
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        code = "\n".join(lines[i + 1 : j]) + "\n"
        if j + 1 < len(lines) and lines[j + 1].startswith("```output"):
            k = j + 2
            while k < len(lines) and not lines[k].startswith("```"):
                k += 1
            pairs.append((code, "\n".join(lines[j + 2 : k])))
            j = k
        i = j + 1
    return pairs


def is_error(output: str) -> bool:
    last = output.strip().splitlines()[-1:] or [""]
    return "Error" in last[0].split(":")[0]


def main(checkout: str) -> None:
    for path, commit, short, model, pick in SOURCES:
        text = subprocess.run(["git", "-C", checkout, "show", f"{commit}:{path}"], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
        for line in text.splitlines():
            rec = json.loads(line)
            if "messages" in rec:
                pid, body = rec["id"], rec["messages"][-1]["content"]
            else:
                pid, body = f"gsm8k-test-{rec['idx']}", rec["code"][0]
            pairs = code_output_pairs(body)
            if not pairs:
                continue
            if pick == "sample" and rec["idx"] % SAMPLE_EVERY and not any(is_error(o) for _, o in pairs):
                continue
            source = {"repo": REPO, "path": path, "commit": commit, "model": model}
            snippets = [{"code": c, "recorded_output": o} for c, o in pairs]
            trace = {"id": f"{short}/{pid}", "source": source, "problem_id": pid, "snippets": snippets}
            print(json.dumps(trace, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1])
