"""smolagents `PythonExecutor` backed by one sandbox session (one per trace)."""

from __future__ import annotations

import re
from typing import Any

from smolagents.local_python_executor import CodeOutput, PythonExecutor

from deep_math.evaluation.extract import fold_output

# Lone surrogates (a snippet printing "\ud800") are not encodable text: a tokenizer refuses them.
_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """`text` with every character that has no UTF-8 encoding replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def format_observation(result: Any) -> str:
    """The fenced block folded back into the trace after a snippet ran.

    Printed output first, then the error text (a short traceback the model can act on), a
    timeout notice or a sandbox-failure notice (which says it is not the code's fault). Any run
    after its session's replay failed says which variables are gone. An empty
    run says so, so the model learns to print what it needs. Characters that cannot be encoded
    (lone surrogates) become U+FFFD. The fence is longer than any run of backticks in the body
    (`fold_output`): printed backticks cannot close the block and pass printed text off as the
    model's own.
    """
    parts = []
    if result.output:
        parts.append(result.output.rstrip("\n"))
    if result.timed_out:
        parts.append(result.error or "TimeoutError: the snippet ran too long and was killed.")
    elif result.error:
        parts.append(result.error.rstrip("\n"))
    replay_error = getattr(result, "replay_error", None)
    if replay_error and replay_error not in "\n".join(parts):
        parts.append(f"Note: the session was restarted and the {replay_error}.")
    body = encodable("\n".join(parts)) if parts else "(no output)"
    return fold_output(body)


class SandboxExecutor(PythonExecutor):
    """Runs each code action in a persistent sandbox session.

    Unlike smolagents' LocalPythonExecutor, the code is real CPython in a separate, OS-confined
    worker process; variables persist across the calls of one trace. Tools are not exposed to
    model code (DeepMath snippets only compute).
    """

    def __init__(self, session: Any):
        self.session = session
        self.last_result: Any = None

    def send_tools(self, tools: dict) -> None:
        # CodeAgent always sends its built-in `final_answer` tool; DeepMath traces answer with
        # \boxed{} in text, so no tool object crosses into the sandbox.
        return None

    def send_variables(self, variables: dict) -> None:
        if variables:
            raise ValueError("SandboxExecutor does not inject variables; pass no additional_args")

    def __call__(self, code_action: str) -> CodeOutput:
        result = self.session.run(code_action)
        self.last_result = result
        return CodeOutput(output=result.output, logs=result.error or "", is_final_answer=False)

    def cleanup(self) -> None:
        self.session.close()
