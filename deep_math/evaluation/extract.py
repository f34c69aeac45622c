"""Final-answer extraction from a DeepMath trace.

Contract of `extract_answer(text, output_spans=None)`:
- Code inside `<tool_call>...</tool_call>` and tool output inside fenced ```` ```output ```` blocks
  never provides the answer (a snippet that prints `\\boxed{...}` is not the model's answer). An
  unclosed block (a trace cut off mid-snippet) runs to the end of the text.
- Tool output is located by `output_spans`, the (start, end) character offsets at which the agent
  inserted each block (`Trace.tool_output_spans`, the sample record's `tool_output_spans`), when
  the caller has them. Without them the blocks are parsed from the text: the agent fences each
  block with more backticks than any run inside it (`fold_output`), so a fence closes only at
  a run of exactly its own length and nothing a snippet prints can end its block early.
- Thinking: when the trace contains `</think>`, only the text after the last `</think>` counts; a
  trace that opened `<think>` and never closed it has no answer (it was cut off while thinking).
- The answer is the content of the last `\\boxed`/`\\fbox` that remains: `\\boxed{...}` with nested
  braces, `\\boxed 5`, `\\boxed\\frac14`. An empty box is no answer.
- Without a box outside tool blocks (a `\\boxed{}` printed by a snippet does not count), the
  model's final text states the answer:
  1. math-verify's own extraction on the text after the last tool block (the matched string is
     returned, not a sympy object, without trailing punctuation); if it finds nothing there, the
     same text with number words as digits ("Three trucks will be needed" -> `3`, see `numwords`);
  2. if that text states nothing (e.g. "Verified." after a last checking snippet), the last
     explicit statement "the answer is X" / "final answer: X" in the model's own text outside
     tool blocks. Only such explicit statements count here, so "To answer this, compute 3+4"
     before a snippet is not an answer.
- None means "no answer".
"""

from __future__ import annotations

import logging
import re
import threading

from deep_math.evaluation.numwords import words_to_digits

log = logging.getLogger(__name__)

_TOOL_CALL = re.compile(r"<tool_call>.*?(?:</tool_call>|\Z)", re.DOTALL)
# Fenced output block as the agent writes it: "```output\n...\n```", the fence three or more
# backticks, closed by a run of exactly as many (unclosed: to the end).
_OUTPUT_BLOCK = re.compile(r"(?<!`)(`{3,})output\b.*?(?:(?<!`)\1(?!`)|\Z)", re.DOTALL)

Span = tuple[int, int]


def output_fence(body: str) -> str:
    """The fence for a tool-output block holding `body`: three backticks, or one more than the
    longest run of backticks in `body`, so that nothing in `body` can close the block."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    return "`" * max(3, longest + 1)


def fold_output(body: str) -> str:
    """A tool-output block as the agent inserts it into a trace: "\\n```output\\n<body>\\n```\\n"."""
    fence = output_fence(body)
    return f"\n{fence}output\n{body}\n{fence}\n"


def _blank_spans(text: str, spans) -> str:
    chars = list(text)
    for _, start, end in spans:
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def tool_spans(text: str, output_spans: list[Span] | None = None) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every tool block in `text`, in order: kind `code` for a
    `<tool_call>` snippet, `output` for a tool-output block. With `output_spans` (the positions
    the agent inserted the outputs at) those are the output blocks and code is looked for outside
    them; without, code is found first and outputs are parsed from the rest."""
    if output_spans is None:
        code = [("code", *m.span()) for m in _TOOL_CALL.finditer(text)]
        outputs = [("output", *m.span()) for m in _OUTPUT_BLOCK.finditer(_blank_spans(text, code))]
    else:
        outputs = [("output", int(a), int(b)) for a, b in output_spans]
        code = [("code", *m.span()) for m in _TOOL_CALL.finditer(_blank_spans(text, outputs))]
    return sorted(code + outputs, key=lambda span: span[1])


_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Commands whose arguments follow without braces in `\boxed\frac14`, with their argument count.
_COMMAND_ARGS = {"frac": 2, "dfrac": 2, "tfrac": 2, "cfrac": 2, "binom": 2, "sqrt": 1}


def split_tool_blocks(text: str, output_spans: list[Span] | None = None) -> tuple[str, list[str]]:
    """(text with tool code and tool output removed, each block replaced by a newline; the removed
    tool-output blocks)."""
    pieces, outputs, at = [], [], 0
    for kind, start, end in tool_spans(text, output_spans):
        pieces.append(text[at:start])
        if kind == "output":
            outputs.append(text[start:end])
        at = end
    pieces.append(text[at:])
    return "\n".join(pieces), outputs


def without_tool_output(text: str) -> str:
    """The trace minus its fenced `output` blocks: what the model itself wrote (tool code included)."""
    return _OUTPUT_BLOCK.sub("", text)


def tool_output_text(text: str) -> str:
    """The concatenated fenced `output` blocks of a trace (what the sandbox wrote into it)."""
    return "".join(m.group(0) for m in _OUTPUT_BLOCK.finditer(text))


def after_thinking(text: str) -> str | None:
    """Text after the last `</think>`; None when thinking was opened and never closed."""
    end = text.rfind("</think>")
    if end >= 0:
        return text[end + len("</think>") :]
    if "<think>" in text:
        return None
    return text


def _brace_group(text: str, start: int) -> tuple[str, int] | None:
    """The content of the `{...}` group opening at text[start] and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "\\":
            continue
        if ch == "{" and (i == start or text[i - 1] != "\\"):
            depth += 1
        elif ch == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None  # unbalanced: the box was cut off


def _token(text: str, i: int) -> tuple[str, int] | None:
    """One TeX argument at text[i]: a brace group (kept with braces), a command, or one character."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] == "{":
        group = _brace_group(text, i)
        return None if group is None else ("{" + group[0] + "}", group[1])
    if text[i] == "\\":
        m = re.match(r"\\(?:[A-Za-z]+|.)", text[i:])
        return (m.group(0), i + len(m.group(0))) if m else None
    return text[i], i + 1


def _box_content(text: str, start: int) -> tuple[str, int] | None:
    """The argument of a box command whose name ends at text[start], and the index after it."""
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text):
        return None
    if text[i] == "{":
        return _brace_group(text, i)
    if text[i] == "\\":  # \boxed\frac14, \boxed\pi
        m = re.match(r"\\([A-Za-z]+)", text[i:])
        if not m:
            return None
        parts, j = [m.group(0)], i + len(m.group(0))
        for _ in range(_COMMAND_ARGS.get(m.group(1), 0)):
            tok = _token(text, j)
            if tok is None:
                break
            parts.append(tok[0])
            j = tok[1]
        return "".join(parts), j
    # \boxed 5, \boxed -3.5: up to whitespace, `$` or a closing delimiter
    m = re.match(r"[^\s$]+", text[i:])
    return (m.group(0).rstrip(".,;"), i + len(m.group(0))) if m else None


def last_boxed_span(text: str) -> tuple[str, int] | None:
    """(content, end index) of the last `\\boxed`/`\\fbox` in `text` with a readable argument."""
    for m in reversed(list(_BOX.finditer(text))):
        found = _box_content(text, m.end())
        if found is not None:
            return found[0].strip(), found[1]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed`/`\\fbox` in `text` with a readable argument, else None."""
    found = last_boxed_span(text)
    return None if found is None else found[0]


def model_text_mask(text: str, output_spans: list[Span] | None = None) -> str:
    """`text` with tool code and tool output blanked out character for character: what the model
    wrote in its own words, at the offsets where it wrote it."""
    return _blank_spans(text, tool_spans(text, output_spans))


def boxed_answer_end(text: str, output_spans: list[Span] | None = None) -> int | None:
    """Character offset in `text` just after the box that `extract_answer` takes the answer from
    (tool blocks and unclosed thinking honoured as there); None when the answer is not boxed."""
    masked = model_text_mask(text, output_spans)
    end = masked.rfind("</think>")
    if end >= 0:
        offset = end + len("</think>")
    elif "<think>" in masked:
        return None
    else:
        offset = 0
    found = last_boxed_span(masked[offset:])
    if found is None or not found[0]:
        return None
    return offset + found[1]


def _math_verify_fallback(text: str) -> str | None:
    from math_verify import parse

    in_main = threading.current_thread() is threading.main_thread()
    # math-verify's timeout uses signal.alarm, which only works in the main thread.
    parsed = parse(text, parsing_timeout=5 if in_main else None)
    if len(parsed) >= 2 and isinstance(parsed[1], str):
        answer = parsed[1].strip().rstrip(".,;:").strip()
        return answer or None
    return None


def _stated_answer(text: str) -> str | None:
    """An unboxed answer in the model's final words: as written, else with number words as digits."""
    answer = _math_verify_fallback(text)
    if answer is None:
        digits = words_to_digits(text)
        if digits != text:
            answer = _math_verify_fallback(digits)
    return answer


# "the answer is X", "final answer: X", "answer = X" (X: the rest of that sentence or line)
_STATEMENT_CUE = re.compile(r"\banswer\b\s*(?:is\b|would\s+be\b|will\s+be\b|equals\b|:|=)", re.IGNORECASE)


def _last_answer_statement(text: str) -> str | None:
    """The X of the last explicit "answer is X" / "answer: X" in `text`."""
    for cue in reversed(list(_STATEMENT_CUE.finditer(text))):
        rest = text[cue.end() :]
        sentence = re.match(r"[^\n]*?(?:\.(?=\s|$)|\n|$)", rest)
        claim = sentence.group(0) if sentence else rest
        if claim.strip():
            answer = _stated_answer("The answer is " + claim.strip())
            if answer is not None:
                return answer
    return None


def extract_answer(text: str, output_spans: list[Span] | None = None) -> str | None:
    """The final answer of a trace as a string, or None when it has none (see module docstring)."""
    if not text:
        return None
    cleaned, _ = split_tool_blocks(text, output_spans)
    cleaned = after_thinking(cleaned)
    if cleaned is None:
        return None
    boxed = last_boxed(cleaned)
    if boxed is not None:
        return boxed or None
    # Unboxed: what the model wrote after its last tool block, else its last explicit statement.
    tail = after_thinking(_tail_after_tools(text, output_spans))
    answer = _stated_answer(tail) if tail and tail.strip() else None
    return answer if answer is not None else _last_answer_statement(cleaned)


def _tail_after_tools(text: str, output_spans: list[Span] | None = None) -> str:
    ends = [end for _, _, end in tool_spans(text, output_spans)]
    return text[max(ends) :] if ends else text
