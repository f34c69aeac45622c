"""The Mini-DeepMath configs compose against their schemas, and every command of
`example.sh mini` is valid (run with `python` stubbed out: nothing is trained or generated)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deep_math.config_utils import ConfigError
from deep_math.testing import REPO, compose_entry, compose_module, entry_point

MODULES = {"deep_math.training.sft": "sft", "deep_math.training.mini_grpo": "mini_grpo"}


def test_configs_compose_and_typos_fail():
    sft = compose_module("sft", [])
    assert sft.template == "mini" and sft.data.source == "mini:train"
    grpo = compose_module("mini_grpo", ["train.max_steps=5"])
    assert grpo.temperature.temp_b_step == 5  # the schedule follows the run's length
    assert grpo.prompt.template == "mini"
    with pytest.raises(ConfigError, match="learning_rate"):
        compose_module("sft", ["+train.learning_rte=1e-3"])
    with pytest.raises(ConfigError, match="code_use_gated"):
        compose_module("mini_grpo", ["~rewards", "+rewards={accuracy:0.1,code_use_gatd:1.0}"])


def test_every_command_of_example_sh_mini_is_valid(tmp_path):
    record = tmp_path / "mini.jsonl"
    stubs = (
        'python() { "$REAL_PYTHON" -c \'import json, sys; print(json.dumps(sys.argv[1:]))\' "$@" >> "$RECORD"; }\n'
        "export -f python\n"
    )
    env = {**os.environ, "REAL_PYTHON": sys.executable, "RECORD": str(record), "GSM8K": str(Path(__file__))}
    proc = subprocess.run(["bash", "-c", stubs + f"source {REPO / 'example.sh'} mini"], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(calls) >= 3 + 2 * 6  # sft, 2 x grpo, then 5 arms + evaluation per data set
    for argv in calls:
        if argv[0] == "-m":
            compose_module(MODULES[argv[1]], argv[2:])
        else:
            found = entry_point(argv)
            assert found is not None, argv
            compose_entry(*found)


def test_dev_before_is_reused_only_under_the_same_settings(tmp_path):
    from deep_math.models import EMBEDDED_ADAPTER_DIR
    from deep_math.training.mini_grpo import dev_settings, reused_before

    path = tmp_path / "dev_accuracy.json"
    cfg = compose_module("mini_grpo", [f"init_adapter={EMBEDDED_ADAPTER_DIR}", f"dev_before={path}"])
    with pytest.raises(ConfigError, match="does not exist"):
        reused_before(cfg)
    before = {"accuracy": 0.5, "n": 24}
    settings = dev_settings(cfg)
    assert len(settings["adapter_sha256"]) == 64
    path.write_text(json.dumps({"settings": settings, "before": before}))
    assert reused_before(cfg) == before
    path.write_text(json.dumps({"settings": {**settings, "dev_eval": "mini:rl_dev:12"}, "before": before}))
    with pytest.raises(ConfigError, match=r"differ: \['dev_eval'\]"):
        reused_before(cfg)
    other = compose_module("mini_grpo", [f"init_adapter={tmp_path}", f"dev_before={path}"])
    path.write_text(json.dumps({"settings": settings, "before": before}))
    with pytest.raises(ConfigError, match="adapter_sha256"):
        reused_before(other)
    assert reused_before(compose_module("mini_grpo", ["dev_before=null"])) is None
