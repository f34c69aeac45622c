"""SFT precision: `train.bf16: null` turns bf16 autocast on only where the hardware multiplies bf16."""

from __future__ import annotations

import pytest

from deep_math.training import builders
from deep_math.training.sft import SFTRunConfig, build_sft_args


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse avx512f avx512bw avx512_bf16 avx512_vnni", True),
        ("fpu sse amx_tile amx_bf16 amx_int8", True),
        ("fpu sse avx2 avx512f avx512bw", False),  # AVX-512 without bf16: emulated, slower
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n")
    assert builders.cpu_has_native_bf16(str(cpuinfo)) is expected


def test_no_cpuinfo_means_no_bf16(tmp_path):
    assert builders.cpu_has_native_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("native", [True, False])
def test_bf16_null_follows_the_hardware_and_an_explicit_value_wins(monkeypatch, native):
    monkeypatch.setattr(builders, "cuda_available", lambda: False)
    monkeypatch.setattr(builders, "cpu_has_native_bf16", lambda: native)
    cfg = SFTRunConfig()
    assert build_sft_args(cfg).bf16 is native
    cfg.train.bf16 = False
    assert build_sft_args(cfg).bf16 is False
