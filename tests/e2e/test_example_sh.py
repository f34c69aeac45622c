"""example.sh stays true: every entry-point command in it composes against its Hydra config and
schema, and the agent server flags parse. The script runs with `python`, `accelerate` and the
background server stubbed out, so nothing is trained or generated; each stub records its argv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deep_math.testing import REPO as ROOT
from deep_math.testing import compose_entry as compose
from deep_math.testing import entry_point

STUBS = r"""
record() {  # one O_APPEND write per call: the background server's stub runs concurrently
  "$REAL_PYTHON" -c 'import json, os, sys
fd = os.open(os.environ["RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(fd, (json.dumps(sys.argv[1:]) + "\n").encode())' "$@"
}
python() { record "$@"; }
accelerate() { record accelerate "$@"; }
kill() { :; }
export -f record python accelerate kill
"""


def invocations(section: str, tmp_path: Path) -> list[list[str]]:
    record = tmp_path / f"{section}.jsonl"
    env = {**os.environ, "REAL_PYTHON": sys.executable, "RECORD": str(record)}
    script = STUBS + f"source {ROOT / 'example.sh'} {section}\nwait\n"  # the background stubs too
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.mark.parametrize("section", ["cpu", "server", "gpu", "vllm-cpu"])
def test_every_command_of_example_sh_is_valid(section, tmp_path):
    calls = invocations(section, tmp_path)
    scripts = [entry_point(argv) for argv in calls]
    assert any(s is not None for s in scripts), calls
    for argv, found in zip(calls, scripts, strict=True):
        if found is not None:
            compose(*found)
        elif argv[:2] == ["-m", "deep_math.vllm_serve_agent"]:
            from deep_math.vllm_serve_agent import parse_args

            parse_args(argv[2:])
        else:
            raise AssertionError(f"example.sh runs something this test does not check: {argv}")


def test_the_gpu_trainer_pulls_traces_from_the_server_it_starts(tmp_path):
    calls = invocations("gpu", tmp_path)
    server = [argv for argv in calls if argv[:2] == ["-m", "deep_math.vllm_serve_agent"]]
    trainer = [
        compose(*entry_point(argv)) for argv in calls if (entry_point(argv) or ("",))[0] == "training.py"
    ]
    assert server and trainer
    assert trainer[0].rollout.backend == "server"
    from deep_math.vllm_serve_agent import parse_args

    served = parse_args(server[0][2:])
    assert (served.agent.max_steps, served.agent.max_agent_output) == (
        trainer[0].agent.max_steps,
        trainer[0].agent.max_agent_output,
    )
