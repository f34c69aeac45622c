"""Weight updates of the served vLLM model: the hooks the agent server forwards TRL's routes to.

Each hook calls the `AsyncLLM` method that vLLM's own RLHF routes call; the mapping is in
docs/vllm_engine.md.

A failed or aborted update leaves the served model part-loaded: vLLM's layerwise reload puts the
layers it has not received yet on the meta device (NCCL) or leaves them uninitialised (HTTP). The
engine then refuses to generate, with an error that says so, until an update completes (a finish
after at least one successful load) or the server restarts.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

from deep_math.engines.base import EngineError
from deep_math.engines.weights import safetensors_chunks

log = logging.getLogger(__name__)


class WeightUpdates:
    """Mixin of `VLLMEngine`: needs `self.llm` (an AsyncLLM) and `self._run(coro)`."""

    llm: Any

    def _run(self, coro: Any) -> Any:  # pragma: no cover - provided by the engine
        raise NotImplementedError

    def __init__(self) -> None:
        self._update_lock = threading.Lock()
        self._update_open = False
        self._loads_in_update = 0
        self._incomplete: str | None = None  # why the served weights cannot be trusted

    def check_servable(self) -> None:
        """Raise EngineError while the served weights are part-loaded (see the module docstring)."""
        if self._incomplete:
            raise EngineError(
                f"refusing to generate: {self._incomplete}, so the served model is only partly loaded. "
                "Push a complete update (POST /start_weight_update, the weights, /finish_weight_update) "
                "or restart the server."
            )

    def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        """Join the trainer's weight-transfer group (blocks in the NCCL rendezvous)."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        self._require_closed("init_weight_transfer")
        self._run(self.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=init_info)))

    def start_weight_update(self) -> None:
        """Open an update: requests in flight finish first; new ones wait until it closes."""
        with self._update_lock:
            if self._update_open:
                raise RuntimeError(
                    "a weight update is already open: POST /finish_weight_update or /abort_weight_update first"
                )
            self._update_open = True
            self._loads_in_update = 0
        try:
            self._run(self.llm.pause_generation(mode="wait", clear_cache=True))
            self._run(self.llm.start_weight_update())
        except BaseException:
            self._close_update(resume=True)
            raise

    def update_weights_nccl(self, update_info: dict[str, Any]) -> None:
        """Receive one NCCL broadcast described by `update_info` (inside an open update)."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        self._require_open("update_weights_nccl")
        self._load(
            lambda: self._run(self.llm.update_weights(WeightTransferUpdateRequest(update_info=update_info)))
        )

    def update_weights(self, named_tensors: dict[str, Any]) -> None:
        """Load CPU tensors by HF name into the served model (the HTTP path). Inside an open update
        they load into it, and a failure aborts it; otherwise this runs a whole update itself."""
        if not self._update_open:
            self.start_weight_update()
            self.update_weights(named_tensors)
            self.finish_weight_update()
            return

        def load() -> None:
            for payload in safetensors_chunks(named_tensors):
                self._run(self.llm.collective_rpc("deep_math_load_safetensors", kwargs={"payload": payload}))

        self._load(load)

    def finish_weight_update(self) -> None:
        """Close the open update: the new weights serve from the next request on."""
        self._require_open("finish_weight_update")
        try:
            self._run(self.llm.finish_weight_update())
            self._run(self.llm.reset_prefix_cache())
        except BaseException:
            self._incomplete = "vLLM failed to finish the last weight update"
            raise
        else:
            # vLLM's layerwise reload leaves layers that received nothing unloaded: only a finish
            # after at least one successful load serves complete weights.
            self._incomplete = (
                None if self._loads_in_update else "the last weight update finished without any weights"
            )
        finally:
            self._close_update(resume=True)

    def abort_weight_update(self) -> None:
        """Close an open update without more weights (no-op when none is open). vLLM has no abort:
        its finish runs, and the engine refuses to generate until a complete update."""
        if not self._update_open:
            return
        self._incomplete = "the last weight update was aborted"
        try:
            self._run(self.llm.finish_weight_update())
        except Exception:  # aborting must always close the update
            log.exception("vLLM finish_weight_update failed while aborting a weight update")
        finally:
            self._close_update(resume=True)
        log.warning("vLLM weight update aborted: generation is refused until a complete update")

    def weights_hash(self) -> str:
        """sha256 of the workers' parameter hashes (vLLM's layout: not comparable with a trainer's)."""
        self._require_closed("weights_hash")
        hashes = self._run(self.llm.collective_rpc("deep_math_weights_hash"))
        if len(hashes) == 1:
            return hashes[0]
        return hashlib.sha256("".join(hashes).encode()).hexdigest()

    # --- helpers ------------------------------------------------------------------------
    def _load(self, load: Any) -> None:
        try:
            load()
        except BaseException as exc:
            self.abort_weight_update()
            self._incomplete = f"a weight update failed while loading ({type(exc).__name__}: {exc})"
            raise
        self._loads_in_update += 1

    def _require_closed(self, what: str) -> None:
        if self._update_open:
            raise RuntimeError(f"{what} is not allowed while a weight update is open")

    def _require_open(self, what: str) -> None:
        if not self._update_open:
            raise RuntimeError(f"{what}: no weight update is open; POST /start_weight_update first")

    def _close_update(self, resume: bool) -> None:
        try:
            if resume:
                self._run(self.llm.resume_generation())
        finally:
            with self._update_lock:
                self._update_open = False
