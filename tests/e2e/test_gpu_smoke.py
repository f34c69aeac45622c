"""`scripts/gpu_smoke.sh --cpu`: the GPU smoke script rehearsed on CPU, so that the one run a GPU
session can afford is not its first. Uses DeepSpeed ZeRO-2 (configs/zero2.yaml, CPU accelerator,
gloo) when deepspeed is importable, else the script's plain single-device accelerate config."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from deep_math.testing import REPO as ROOT


@pytest.mark.slow
def test_gpu_smoke_script_rehearsed_on_cpu(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_smoke.sh"), "--cpu", str(tmp_path / "smoke")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},  # this interpreter, whatever `python` is on PATH
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    lines = [line for line in out.splitlines() if line.startswith("gpu_smoke:")]
    assert any("network blocked=True" in line for line in lines), lines
    assert sum(" loss " in line and "trace errors 0" in line for line in lines) == 2, lines
    assert any("LoRA B matrices" in line for line in lines), lines
    assert lines[-1].split("] ", 1)[1].startswith("OK"), lines
    if importlib.util.find_spec("deepspeed") is not None:  # ZeRO-2 really ran, not a plain launch
        assert any(line.startswith("gpu_smoke: DeepSpeed engaged") for line in lines), lines
    assert (tmp_path / "smoke" / "run" / "checkpoint-2").is_dir()
