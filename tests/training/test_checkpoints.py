"""Resume picks the newest complete checkpoint; an interrupted save is skipped."""

from __future__ import annotations

import json
import logging

from deep_math.training.checkpoints import checkpoint_dirs, last_complete_checkpoint, read_state


def make(root, step, state="ok"):
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    if state == "ok":
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    elif state == "truncated":
        (ckpt / "trainer_state.json").write_text('{"global_step": ' + str(step) + ', "log_hi')
    return ckpt


def test_newest_first_in_numeric_order(tmp_path):
    for step in (2, 10, 9):
        make(tmp_path, step)
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint
    (tmp_path / "checkpoint-11").write_text("a file, not a checkpoint")
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-10", "checkpoint-9", "checkpoint-2"]
    assert checkpoint_dirs(tmp_path / "missing") == []


def test_interrupted_saves_are_skipped_with_a_warning(tmp_path, caplog):
    make(tmp_path, 3)
    make(tmp_path, 4, state="missing")  # killed before trainer_state.json
    make(tmp_path, 5, state="truncated")  # killed while writing it
    with caplog.at_level(logging.WARNING):
        assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
    assert "checkpoint-5" in caplog.text and "checkpoint-4" in caplog.text
    assert read_state(tmp_path / "checkpoint-3")["global_step"] == 3
    assert read_state(tmp_path / "checkpoint-5") is None


def test_no_complete_checkpoint(tmp_path):
    make(tmp_path, 1, state="missing")
    assert last_complete_checkpoint(tmp_path) is None
    assert last_complete_checkpoint(tmp_path / "missing") is None
