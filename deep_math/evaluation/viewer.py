"""The trace viewer: one self-contained static HTML page per evaluation.

Works from a file:// URL with no server and no network: the CSS and the few lines of JavaScript
are inline, nothing is fetched. Every piece of record text (problems, targets, answers, traces,
labels, file names) is HTML-escaped before it is written, and no record text is ever placed
inside the <script> element, so a trace holding `</script>` or `<img onerror=...>` is shown as
text. The page is rendered here in Python; the script only hides and shows. As a second line of
defence a Content-Security-Policy allows nothing to load and only the viewer's own script (by
its hash) to run.

Layout: the run summary (the comparison table; with several runs the arms' flips and paired
intervals), the accuracy-against-budget table, then per problem its target, each run's majority
answer and each sample as a collapsible trace: extracted answer and correctness, token counts,
then the trace with the model's text, the `<tool_call>` code (highlighted), the tool output, and
failing or timed-out snippets drawn in red / orange with a label.

Filters (sample level; a problem is hidden when none of its samples is shown): all, wrong,
right, used tool, tool error, no answer; a run selector (several runs); a search box (matches
the problem, target, answer and trace text, case-insensitive). The state lives in the URL
fragment, e.g. `report.html#filter=tool_error&q=sympy&run=1&open=1` (`open=1` expands the
shown traces), so a filtered view can be linked or opened headless.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from typing import TYPE_CHECKING, Any

from deep_math.evaluation import arms as arms_mod
from deep_math.evaluation import budget
from deep_math.evaluation.extract import boxed_answer_end, tool_spans

if TYPE_CHECKING:
    from deep_math.evaluation.records import Sample
    from deep_math.evaluation.run import EvaluatedRun

FILTERS = {
    "all": "all",
    "wrong": "wrong",
    "right": "right",
    "tool": "used tool",
    "tool_error": "tool error",
    "no_answer": "no answer",
}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# --- output classification -------------------------------------------------------------------

_TIMEOUT = re.compile(r"\bTimeoutError\b|\btimed out\b|ran (?:too long|longer than)", re.IGNORECASE)
_ERROR = re.compile(
    r"Traceback \(most recent call last\)|^\s*[A-Za-z_][\w.]*(?:Error|Exception)\b:?", re.MULTILINE
)


def output_kind(body: str) -> str:
    """`timeout`, `error` or `ok` for the text of one tool-output block (as the sandbox words it)."""
    if _TIMEOUT.search(body):
        return "timeout"
    if _ERROR.search(body):
        return "error"
    return "ok"


# --- a tiny Python highlighter --------------------------------------------------------------------

_KEYWORDS = (
    "False None True and as assert async await break class continue def del elif else except "
    "finally for from global if import in is lambda nonlocal not or pass raise return try while "
    "with yield"
).split()
_BUILTINS = (
    "abs all any bool dict divmod enumerate filter float int len list map max min print range "
    "round set sorted str sum tuple zip pow"
).split()
_PY_TOKEN = re.compile(
    r"(?P<com>#[^\n]*)"
    r"|(?P<str>(?:[rRbBuUfF]{,2})(?:'''[\s\S]*?(?:'''|$)|\"\"\"[\s\S]*?(?:\"\"\"|$)"
    r"|'(?:\\.|[^'\\\n])*'?|\"(?:\\.|[^\"\\\n])*\"?))"
    r"|(?P<num>\b\d+(?:\.\d*)?(?:[eE][+-]?\d+)?j?\b)"
    r"|(?P<name>[A-Za-z_]\w*)"
)


def highlight_python(code: str) -> str:
    """Escaped HTML of `code` with comments, strings, numbers, keywords and builtins in spans."""
    out, pos = [], 0
    for m in _PY_TOKEN.finditer(code):
        out.append(esc(code[pos : m.start()]))
        kind, text = m.lastgroup, m.group(0)
        if kind == "name":
            kind = "kw" if text in _KEYWORDS else "bi" if text in _BUILTINS else None
        out.append(f'<span class="{kind}">{esc(text)}</span>' if kind else esc(text))
        pos = m.end()
    out.append(esc(code[pos:]))
    return "".join(out)


# --- one trace ----------------------------------------------------------------------------------

_CODE_TAGS = re.compile(r"^<tool_call>\n?|\n?</tool_call>$")
_OUTPUT_FENCE = re.compile(r"^```output\n?|\n?```$")


def _model_html(text: str, box: tuple[int, int] | None, offset: int) -> str:
    """Escaped model text; the final answer's box (absolute span `box`) is marked."""
    if box is None or not (offset <= box[0] < offset + len(text)):
        return esc(text)
    a, b = box[0] - offset, min(box[1] - offset, len(text))
    return esc(text[:a]) + '<mark class="answer">' + esc(text[a:b]) + "</mark>" + esc(text[b:])


def _answer_box(text: str) -> tuple[int, int] | None:
    end = boxed_answer_end(text)
    if end is None:
        return None
    start = max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))
    return (start, end) if start >= 0 else None


def trace_segments(text: str) -> list[tuple[str, str]]:
    """(kind, text) pieces of a trace in order: `model`, `code`, `output` (fences stripped)."""
    pieces, pos = [], 0
    for kind, a, b in tool_spans(text):
        if a > pos:
            pieces.append(("model", text[pos:a]))
        raw = text[a:b]
        body = _CODE_TAGS.sub("", raw) if kind == "code" else _OUTPUT_FENCE.sub("", raw)
        pieces.append((kind, body))
        pos = b
    if pos < len(text):
        pieces.append(("model", text[pos:]))
    return pieces


def _tool_html(kind: str, raw: str) -> str:
    if kind == "code":
        code = highlight_python(_CODE_TAGS.sub("", raw))
        return f'<div class="seg code"><span class="tag">tool call</span><pre>{code}</pre></div>'
    body = _OUTPUT_FENCE.sub("", raw)
    status = output_kind(body)
    label = {"ok": "output", "error": "tool error", "timeout": "tool timeout"}[status]
    return f'<div class="seg out out-{status}"><span class="tag">{label}</span><pre>{esc(body)}</pre></div>'


def _model_segment(text: str, start: int, end: int, box: tuple[int, int] | None) -> str:
    """One stretch of model text; the newlines that only separate it from tool blocks are not
    drawn (the blocks are boxes of their own). Whitespace-only stretches are dropped."""
    piece = text[start:end]
    lead = len(piece) - len(piece.lstrip("\n"))
    piece = piece.strip("\n")
    if not piece.strip():
        return ""
    return f'<div class="seg model">{_model_html(piece, box, start + lead)}</div>'


def render_trace(text: str) -> str:
    """The trace as HTML: model text (final answer box marked), tool code, tool output."""
    box = _answer_box(text)
    parts, pos = [], 0
    for kind, a, b in tool_spans(text):
        parts.append(_model_segment(text, pos, a, box))
        parts.append(_tool_html(kind, text[a:b]))
        pos = b
    parts.append(_model_segment(text, pos, len(text), box))
    return "".join(parts) or '<div class="seg model empty">(empty trace)</div>'


def sample_flags(sample: Sample) -> dict[str, bool]:
    """What the filters key on. Tool errors: the recorded counts, or (files without counts) an
    output block that reads as an error or timeout."""
    kinds = [output_kind(body) for kind, body in trace_segments(sample.text) if kind == "output"]
    counted = (sample.tool_errors or 0) + (sample.tool_timeouts or 0) + (sample.sandbox_errors or 0)
    calls = sample.tool_calls if sample.tool_calls is not None else sample.text.count("<tool_call>")
    return {
        "tool": calls > 0,
        "tool_error": counted > 0 or any(k != "ok" for k in kinds),
    }


def _count(value: int | None, unit: str) -> str:
    return "" if value is None else f"<span>{value:,} {unit}</span>"


def render_sample(j: int, run_index: int, sample: Sample, grade: Any) -> str:
    flags = sample_flags(sample)
    answered = grade.answer is not None
    verdict = "right" if grade.correct else ("no answer" if not answered else "wrong")
    cls = "right" if grade.correct else "wrong"
    answer = f"<code>{esc(grade.answer)}</code>" if answered else "<em>no answer</em>"
    extras = []
    if grade.status not in ("ok", "no_answer"):
        extras.append(f'<span class="warn">grading {esc(grade.status)}</span>')
    if sample.tool_calls:
        extras.append(f"<span>{sample.tool_calls} tool call{'s' * (sample.tool_calls != 1)}</span>")
    for n, what in ((sample.tool_errors, "tool error"), (sample.tool_timeouts, "tool timeout")):
        if n:
            extras.append(f'<span class="warn">{n} {what}{"s" * (n != 1)}</span>')
    if sample.sandbox_errors:
        extras.append(f'<span class="warn">{sample.sandbox_errors} sandbox error(s)</span>')
    if flags["tool_error"] and not (sample.tool_errors or sample.tool_timeouts or sample.sandbox_errors):
        extras.append('<span class="warn">tool error</span>')
    if sample.finish_reason:
        extras.append(f"<span>finish: {esc(sample.finish_reason)}</span>")
    return (
        f'<details class="sample {cls}" data-run="{run_index}" data-correct="{int(grade.correct)}" '
        f'data-answer="{int(answered)}" data-tool="{int(flags["tool"])}" '
        f'data-tool-error="{int(flags["tool_error"])}">'
        f'<summary><span class="idx">#{j + 1}</span> <span class="verdict {cls}">{verdict}</span> '
        f"{answer}"
        f'<span class="counts">{_count(sample.model_tokens, "model tok")}'
        f"{_count(sample.tool_tokens, 'tool tok')}{''.join(extras)}</span></summary>"
        f'<div class="trace">{render_trace(sample.text)}</div></details>'
    )


# --- page -------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _summary_html(runs: list[EvaluatedRun], paired: dict[str, Any] | None) -> str:
    from deep_math.evaluation.report import _name, table_rows

    header, rows = table_rows(runs)
    parts = ["<h2>Summary</h2>", _table(header, rows, "summary")]
    if paired is not None:
        names = "arm" if paired["by_arm"] else "run"
        run_rows = [
            [
                r["name"],
                r["label"],
                "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}",
                "-" if r["model_tokens_mean"] is None else f"{r['model_tokens_mean']:,.0f}",
                "-" if r["tool_use_share"] is None else f"{100 * r['tool_use_share']:.1f}",
            ]
            for r in paired["runs"]
        ]
        parts += [
            f"<h2>{'Three-arm comparison' if paired['by_arm'] else 'Paired comparison'}</h2>",
            _table([names, "label", "accuracy (maj@k, %)", "model tokens", "tool use (%)"], run_rows),
        ]
        pair_rows = []
        for p in paired["pairs"]:
            ci = p["interval"]
            interval = f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "-"
            pair_rows.append([*arms_mod.pair_cells(p), f"{100 * p['difference']:+.1f}", interval])
        boot = paired["bootstrap"]
        parts.append(
            _table(
                ["B vs A", "shared", "B only", "A only", "both", "neither", "B - A", "paired CI"],
                pair_rows,
                "pairs",
            )
            + f'<p class="note">Flips: problems whose maj@k answer is right in one and wrong in the '
            f"other. Interval: paired bootstrap over problems, {boot['resamples']} resamples, "
            f"{100 * boot['confidence']:.0f}%, seed {boot['seed']}.</p>"
        )
    with_budget = [(_name(r), r.budget) for r in arms_mod.ordered(runs) if r.budget is not None]
    if with_budget:
        header, rows = budget.table_rows(with_budget)
        parts += [
            "<h2>Accuracy against token budget (maj@k, %)</h2>",
            _table(header, rows, "budget"),
            '<p class="note">A trace cut at a budget counts only if its answer was boxed within it; '
            "model and tool tokens both count; k = 1024 tokens.</p>",
        ]
    return "".join(parts)


def _problem_html(
    i: int, runs: list[EvaluatedRun], by_id: list[dict[str, Any]], pid: str, max_samples: int | None
) -> str:
    first = next(m[pid] for m in by_id if pid in m)
    p = first.problem
    verdicts, blocks = [], []
    for ri, (run, results) in enumerate(zip(runs, by_id, strict=True)):
        r = results.get(pid)
        if r is None:
            continue
        vote = r.majority()
        cls = "right" if vote.correct else "wrong"
        name = esc(run.label)
        verdicts.append(f'<span class="pill {cls}" title="majority answer of {name}">{name}</span>')
        pairs = list(zip(r.samples, r.grades, strict=True))[:max_samples]
        samples = "".join(render_sample(j, ri, s, g) for j, (s, g) in enumerate(pairs))
        majority = f"<code>{esc(vote.answer)}</code>" if vote.answer is not None else "<em>none</em>"
        blocks.append(
            f'<div class="run" data-run="{ri}"><h4>{name}'
            f"{f' · {esc(arms_mod.arm_title(run.arm))}' if run.arm else ''}: majority {majority} "
            f'<span class="verdict {cls}">{"right" if vote.correct else "wrong"}</span> · '
            f"{sum(r.correct)}/{len(r.grades)} samples right</h4>{samples}</div>"
        )
    statement = f'<div class="statement">{esc(p.problem)}</div>' if p.problem else ""
    return (
        f'<section class="problem" id="p{i}" data-id="{esc(pid)}">'
        f'<h3><span class="pid">{esc(pid)}</span> target <code>{esc(p.target)}</code> '
        f"{''.join(verdicts)}</h3>{statement}{''.join(blocks)}</section>"
    )


def render_html(
    runs: list[EvaluatedRun], paired: dict[str, Any] | None = None, max_samples: int | None = None
) -> str:
    """The whole page for `runs` (one or several evaluated files); `max_samples`: traces drawn per
    problem and run (the first ones; None: all). Votes and verdicts always use every sample."""
    shown = arms_mod.ordered(runs)
    by_id = [{r.problem.id: r for r in run.results} for run in shown]
    ids = list(dict.fromkeys(pid for m in by_id for pid in m))
    problems = "".join(_problem_html(i, shown, by_id, pid, max_samples) for i, pid in enumerate(ids))
    k = max((len(r.grades) for run in shown for r in run.results), default=0)
    cap = (
        f'<p class="note">Traces drawn: the first {max_samples} of {k} samples per problem and run '
        "(html_samples); filters and counts apply to those.</p>"
        if max_samples is not None and k > max_samples
        else ""
    )
    buttons = "".join(
        f'<label><input type="radio" name="filter" value="{key}"{" checked" * (key == "all")}> {esc(title)}</label>'
        for key, title in FILTERS.items()
    )
    run_select = ""
    if len(shown) > 1:
        options = "".join(f'<option value="{i}">{esc(run.label)}</option>' for i, run in enumerate(shown))
        run_select = f'<select id="run" title="run"><option value="all">all runs</option>{options}</select>'
    files = ", ".join(esc(run.path) for run in shown)
    script_hash = base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>DeepMath traces: {esc(', '.join(run.label for run in shown))}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>DeepMath evaluation</h1><p class='files'>{files}</p></header>"
        f'<section id="top">{_summary_html(shown, paired)}{cap}</section>'
        f'<nav id="controls"><span class="filters">{buttons}</span>{run_select}'
        '<input id="q" type="search" placeholder="search problems, answers, traces" size="32">'
        '<label><input type="checkbox" id="open"> expand shown</label>'
        '<span id="count"></span></nav>'
        f'<main id="problems">{problems}</main>'
        f"<script>{_JS}</script></body></html>\n"
    )


_CSS = """
:root{--ok:#1a7f37;--accent:#0969da;--bad:#cf222e;--warn:#bc4c00;--muted:#57606a;--line:#d0d7de}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header,#top,main{max-width:1200px;margin:0 auto;padding:0 16px}
h1{font-size:20px;margin:14px 0 2px}h2{font-size:15px;margin:14px 0 6px}
.files{color:var(--muted);margin:0;font-size:12px;word-break:break-all}
table{border-collapse:collapse;background:#fff;font-size:12px;margin-bottom:4px}
th,td{border:1px solid var(--line);padding:3px 7px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#eaeef2}
#top{overflow-x:auto}.note{color:var(--muted);font-size:12px;margin:2px 0 8px}
#controls{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);
 padding:8px 16px;display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin-top:10px}
#controls label{cursor:pointer;white-space:nowrap}
.filters{display:flex;gap:4px}.filters input{position:absolute;opacity:0;pointer-events:none}
.filters label{border:1px solid var(--line);border-radius:12px;padding:2px 10px;font-size:13px}
.filters label:has(input:checked){background:var(--accent);border-color:var(--accent);color:#fff}
.filters label:has(input:focus-visible){outline:2px solid var(--accent);outline-offset:1px}#count{color:var(--muted);margin-left:auto}
#q{padding:3px 6px}
.problem{background:#fff;border:1px solid var(--line);border-radius:6px;margin:12px 0;padding:6px 12px}
.problem h3{font-size:14px;margin:4px 0}.pid{color:var(--muted);margin-right:6px}
.pill{font-size:11px;border-radius:9px;padding:1px 8px;margin-left:6px;color:#fff}
.pill.right{background:var(--ok)}.pill.wrong{background:var(--bad)}
.run h4{font-size:13px;font-weight:600;margin:8px 0 4px}
.verdict{font-size:11px;font-weight:600;text-transform:uppercase}
.verdict.right{color:var(--ok)}.verdict.wrong{color:var(--bad)}
details.sample{border-left:4px solid var(--line);margin:3px 0;padding:2px 8px;background:#fbfcfd}
details.sample.right{border-left-color:var(--ok)}details.sample.wrong{border-left-color:var(--bad)}
details.sample>summary{cursor:pointer}.idx{color:var(--muted)}
.counts span{color:var(--muted);font-size:12px;margin-left:10px}.counts .warn,.warn{color:var(--warn);font-weight:600}
code{background:#eff1f3;border-radius:4px;padding:0 4px;font-size:12px}
.statement{white-space:pre-wrap;padding:2px 0 4px;color:#24292f}
.trace{margin:6px 0 8px}.seg{margin:4px 0;border-radius:5px}
.seg.model{white-space:pre-wrap;word-wrap:break-word;padding:2px 0}
.seg pre{margin:0;padding:6px 10px;white-space:pre-wrap;word-wrap:break-word;font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
.seg .tag{display:inline-block;font-size:10px;text-transform:uppercase;letter-spacing:.04em;padding:1px 6px;border-radius:4px 4px 0 0}
.seg.code pre{background:#1f2430;color:#e6e6e6;border-radius:0 5px 5px 5px}.seg.code .tag{background:#1f2430;color:#9fb3c8}
.kw{color:#ff8f40}.bi{color:#73d0ff}.str{color:#bae67e}.num{color:#ffcc66}.com{color:#8a919e;font-style:italic}
.seg.out pre{background:#eef1f4;border:1px solid var(--line);border-radius:0 5px 5px 5px}.seg.out .tag{background:#d8dee4;color:#333}
.seg.out-error pre{background:#ffebe9;border-color:#ff8182;color:#82071e}.seg.out-error .tag{background:var(--bad);color:#fff}
.seg.out-timeout pre{background:#fff1e5;border-color:#fb8f44;color:#7a2e0b}.seg.out-timeout .tag{background:var(--warn);color:#fff}
mark.answer{background:#fff8c5;outline:1px solid #d4a72c;border-radius:3px}
[hidden]{display:none!important}
"""

_JS = """
(function(){
var samples=[].slice.call(document.querySelectorAll('details.sample'));
var problems=[].slice.call(document.querySelectorAll('section.problem'));
var runs=[].slice.call(document.querySelectorAll('div.run'));
var q=document.getElementById('q'),runSel=document.getElementById('run'),open=document.getElementById('open');
var tests={all:function(d){return true},wrong:function(d){return d.correct==='0'},
 right:function(d){return d.correct==='1'},tool:function(d){return d.tool==='1'},
 tool_error:function(d){return d.toolError==='1'},no_answer:function(d){return d.answer==='0'}};
var texts=new Map();
function text(s){if(!texts.has(s)){var p=s.closest('section.problem');
 texts.set(s,(p.querySelector('h3').textContent+' '+(p.querySelector('.statement')||{textContent:''}).textContent+' '+s.textContent).toLowerCase())}
 return texts.get(s)}
function filter(){var c=document.querySelector('input[name=filter]:checked');return c?c.value:'all'}
function apply(){var f=filter(),needle=q.value.trim().toLowerCase(),r=runSel?runSel.value:'all',shown=0;
 samples.forEach(function(s){var ok=tests[f](s.dataset)&&(r==='all'||s.dataset.run===r)&&(!needle||text(s).indexOf(needle)>=0);
  s.hidden=!ok;if(ok){shown++;if(open.checked)s.open=true}});
 runs.forEach(function(b){b.hidden=!b.querySelector('details.sample:not([hidden])')});
 problems.forEach(function(p){p.hidden=!p.querySelector('details.sample:not([hidden])')});
 document.getElementById('count').textContent=shown+' of '+samples.length+' samples';
 var h=[];if(f!=='all')h.push('filter='+f);if(needle)h.push('q='+encodeURIComponent(q.value.trim()));
 if(r!=='all')h.push('run='+r);if(open.checked)h.push('open=1');
 var frag=h.length?'#'+h.join('&'):'';if(location.hash!==frag)history.replaceState(null,'',frag||location.pathname+location.search)}
function load(){var p={};location.hash.replace(/^#/,'').split('&').forEach(function(kv){var i=kv.indexOf('=');if(i>0)p[kv.slice(0,i)]=decodeURIComponent(kv.slice(i+1))});
 var f=tests[p.filter]?p.filter:'all';document.querySelector('input[name=filter][value='+f+']').checked=true;
 q.value=p.q||'';if(runSel)runSel.value=p.run||'all';open.checked=p.open==='1';apply()}
document.querySelectorAll('input[name=filter]').forEach(function(i){i.addEventListener('change',apply)});
q.addEventListener('input',apply);open.addEventListener('change',apply);if(runSel)runSel.addEventListener('change',apply);
window.addEventListener('hashchange',load);load();
})();
"""
