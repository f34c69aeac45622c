"""The static HTML trace viewer: escaping, segments, and (headless Chromium) filters in the DOM."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from deep_math.evaluation.metrics import MajorityAtK, OutputLength, ToolUse
from deep_math.evaluation.pool import GradingPool
from deep_math.evaluation.report import paired_comparison
from deep_math.evaluation.run import evaluate_file
from deep_math.evaluation.viewer import highlight_python, output_kind, render_html


def tool(code: str, output: str) -> str:
    return f"\n<tool_call>\n{code}\n</tool_call>\n```output\n{output}\n```\n"


TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "<cell 1>", line 2, in <module>\n'
    "ZeroDivisionError: division by zero"
)
TIMEOUT = "TimeoutError: the snippet ran longer than 20 s and was killed; variables were restored."
HOSTILE = '</script><script>window.PWNED=true</script><img src=x onerror="alert(document.title)">'

AGENT = {"model": "m", "agent": True, "lora_path": None}
BASELINE = {"model": "m", "agent": False, "lora_path": None}


def _s(text, model, tool_tokens=0, calls=0, errors=0, timeouts=0, reason="answer"):
    return {
        "text": text,
        "model_tokens": model,
        "tool_tokens": tool_tokens,
        "tool_calls": calls,
        "tool_errors": errors,
        "tool_timeouts": timeouts,
        "steps": calls + 1,
        "finish_reason": reason,
    }


AGENT_ROWS = [
    {
        "id": "algebra/1",
        "problem": "Real numbers $a$ and $b$ satisfy $a+b=7$ and $a^2+b^2=29$. Find $a^3+b^3$.",
        "target": "133",
        "samples": [
            _s(
                "Solve the system, then evaluate."
                + tool(
                    "from sympy import symbols, solve\na, b = symbols('a b')  # unknowns\n"
                    "sols = solve([a + b - 7, a**2 + b**2 - 29], [a, b])\nprint({s[0]**3 + s[1]**3 for s in sols})",
                    "{133}",
                )
                + "Both solutions agree, so $a^3+b^3 = \\boxed{133}$.",
                62,
                6,
                calls=1,
            ),
            _s(
                "Use the identity directly."
                + tool("ab = (7**2 - 29) / 0\nprint(7**3 - 3*ab*7)", TRACEBACK)
                + "I divided by zero; $ab = (49-29)/2 = 10$."
                + tool("ab = (7**2 - 29) // 2\nprint(7**3 - 3*ab*7)", "133")
                + "So $a^3+b^3=\\boxed{133}$.",
                80,
                40,
                calls=2,
                errors=1,
            ),
        ],
        "meta": AGENT,
    },
    {
        "id": "counting/2",
        "problem": "How many integers $1 \\le n \\le 500$ are divisible by 3 or 7 but not by 21?",
        "target": "191",
        "samples": [
            _s(
                "Brute force with a slow loop."
                + tool("import time\nwhile True:\n    time.sleep(1)", TIMEOUT)
                + "The loop hung. Counting by hand: $166 + 71 - 2\\cdot 23 = \\boxed{189}$.",
                70,
                30,
                calls=1,
                timeouts=1,
            ),
            _s("Let me think step by step " + HOSTILE, 40, reason="budget"),
        ],
        "meta": AGENT,
    },
    {
        "id": "gsm/3",
        "problem": "Each truck carries 40 boxes. How many trucks carry 120 boxes?",
        "target": "3",
        "samples": [
            _s(
                "120 / 40 = 3 trucks." + tool("print(120 // 40)", "3") + "Three trucks will be needed.",
                30,
                4,
                1,
            ),
            _s("We need \\boxed{4} trucks.", 12),
        ],
        "meta": AGENT,
    },
]

BASELINE_ROWS = [
    {
        **row,
        "samples": [_s(f"Thinking without tools. \\boxed{{{ans}}}", 90) for ans in answers],
        "meta": BASELINE,
    }
    for row, answers in zip(AGENT_ROWS, [("133", "133"), ("191", "190"), ("5", "5")], strict=True)
]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("viewer")
    metrics = [MajorityAtK(bootstrap=50), OutputLength(), ToolUse()]
    with GradingPool(workers=0) as pool:
        runs = [
            evaluate_file(_write(folder / name, rows), pool, metrics, budgets=[64, 128])
            for name, rows in (("agent.jsonl", AGENT_ROWS), ("baseline.jsonl", BASELINE_ROWS))
        ]
    path = folder / "comparison.html"
    path.write_text(render_html(runs, paired_comparison(runs)), encoding="utf-8")
    return path


class Samples(HTMLParser):
    """Collects each `details.sample` (its attributes, hidden or not) and the output blocks in it."""

    def __init__(self):
        super().__init__()
        self.samples: list[dict] = []
        self.scripts = 0
        self._out: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "script":
            self.scripts += 1
        if tag == "details" and "sample" in classes:
            self.samples.append({**a, "outputs": [], "text": ""})
        if tag == "div" and "out" in classes and self.samples:
            self._out = {"class": classes, "text": ""}
            self.samples[-1]["outputs"].append(self._out)

    def handle_endtag(self, tag):
        if tag == "pre":
            self._out = None

    def handle_data(self, data):
        if self.samples:
            self.samples[-1]["text"] += data
        if self._out is not None:
            self._out["text"] += data


def parse(html: str) -> Samples:
    p = Samples()
    p.feed(html)
    return p


def test_page_is_self_contained_and_escaped(page):
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and " src=" not in html.replace("src=x", "")
    doc = parse(html)
    assert doc.scripts == 1  # only the viewer's own script: the hostile trace is text
    assert "&lt;/script&gt;&lt;script&gt;window.PWNED=true" in html
    hostile = [s for s in doc.samples if "window.PWNED=true" in s["text"]]
    assert len(hostile) == 1 and "</script>" in hostile[0]["text"]  # shown, as text
    assert len(doc.samples) == 12


def test_sample_cap_keeps_votes(page):
    from html import unescape

    html = page.read_text()
    folder = page.parent
    metrics = [MajorityAtK(bootstrap=0)]
    with GradingPool(workers=0) as pool:
        run = evaluate_file(folder / "agent.jsonl", pool, metrics)
    capped = render_html([run], None, max_samples=1)
    assert len(parse(capped).samples) == 3 and "first 1 of 2 samples" in unescape(capped)
    assert len(parse(html).samples) == 12


def test_output_blocks_classified():
    assert output_kind(TRACEBACK) == "error"
    assert output_kind(TIMEOUT) == "timeout"
    assert output_kind("SandboxPolicyError: import of 'os' is not allowed") == "error"
    assert output_kind("{133}\nerror bars: 0.1") == "ok"
    html = highlight_python("import math  # c\nprint('</pre>', 1.5)")
    assert '<span class="kw">import</span>' in html and '<span class="com"># c</span>' in html
    assert (
        '<span class="str">&#x27;&lt;/pre&gt;&#x27;</span>' in html and '<span class="num">1.5</span>' in html
    )


def test_tool_error_sample_shows_the_error(page):
    doc = parse(page.read_text())
    errored = [s for s in doc.samples if s["data-tool-error"] == "1"]
    assert len(errored) == 2  # the traceback and the timeout, both in the agent run
    kinds = sorted(o["class"][-1] for s in errored for o in s["outputs"] if o["class"][-1] != "out-ok")
    assert kinds == ["out-error", "out-timeout"]
    assert any("ZeroDivisionError" in o["text"] for s in errored for o in s["outputs"])


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


needs_chromium = pytest.mark.skipif(
    _chromium() is None,
    reason="headless Chromium not installed (Debian: apt-get install -y chromium); the DOM checks need it",
)


def _dom(page: Path, fragment: str, tmp_path: Path) -> Samples:
    """The DOM after the page's script ran on `page#fragment`, as headless Chromium serializes it."""
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # tests may run as root in a container
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        page.as_uri() + fragment,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return parse(proc.stdout)


@needs_chromium
@pytest.mark.parametrize(
    ("fragment", "shown"),
    [
        ("#filter=wrong", lambda s: s["data-correct"] == "0"),
        (
            "#filter=tool&run=1&q=zerodivision",  # filter, run and search together
            lambda s: s["data-tool"] == "1" and s["data-run"] == "1" and "ZeroDivisionError" in s["text"],
        ),
    ],
    ids=["wrong", "tool_in_agent_run_search"],
)
def test_filters_hide_what_they_should(page, tmp_path, fragment, shown):
    doc = _dom(page, fragment, tmp_path)
    assert len(doc.samples) == 12
    visible = [s for s in doc.samples if "hidden" not in s]
    assert visible and len(visible) < 12, "the filter must show some samples and hide others"
    for s in doc.samples:
        assert ("hidden" not in s) == shown(s), (fragment, s["text"][:80])


@needs_chromium
def test_tool_error_filter_shows_the_error_in_the_dom(page, tmp_path):
    doc = _dom(page, "#filter=tool_error&open=1", tmp_path)
    visible = [s for s in doc.samples if "hidden" not in s]
    assert len(visible) == 2 and all("open" in s for s in visible)
    labels = [
        o["text"] for s in visible for o in s["outputs"] if o["class"][-1] in ("out-error", "out-timeout")
    ]
    assert any("ZeroDivisionError" in t for t in labels) and any("TimeoutError" in t for t in labels)
    assert all("tool error" in s["text"] or "tool timeout" in s["text"] for s in visible)


@needs_chromium
def test_screenshot(page, tmp_path):
    shot = tmp_path / "viewer.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,900",
        f"--screenshot={shot}",
        page.as_uri() + "#filter=tool_error&open=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.read_bytes()[:4] == b"\x89PNG"
