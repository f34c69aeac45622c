"""Layer 1: the Python-level policy (import allow-list, restricted builtins, attribute rules).

This layer gives the model clear, actionable errors ("import of os is not allowed; allowed: ...")
and stops the obvious escapes (`__subclasses__`, frames, `__globals__`, `__builtins__`). It is a
guard rail, NOT the security boundary: library code such as `sympy.sympify`, `parse_expr` and
`lambdify` evaluates strings with the real builtins, and `operator.attrgetter`, `str.format` or
private module attributes (`random._os`) reach past any Python-level rule. Containment of what
such code can do comes from the OS layers in `oslimits.py` (seccomp, Landlock, namespaces,
rlimits), which apply to everything the worker process runs, native code included.

Only the snippet's own code is checked: the AST walk in `check_source` runs before compiling, and
the restricted builtins are installed in the session's globals, so library code (which has its
own module globals) runs unmodified and at full speed.

The import allow-list judges the snippet's own `import` statements and nothing else. An import a
library makes for itself is not the model's import: Python library code imports through its own
module's (real) builtins, but C code calls `PyImport_Import`, which takes `__import__` from the
innermost *Python* frame; when a snippet calls into C directly (`print(array)` runs numpy's C
`ndarray.__str__`, which imports `numpy._core.arrayprint` at first use), that frame is the
snippet's. The restricted `__import__` therefore judges a request only when the calling frame is
executing an import statement (`IMPORT_NAME`) and passes every other request through; whatever
the library then does stays inside the OS layers. (Snippet code that digs the function out of
`globals()["__builtins__"]` and calls it gets the same pass: one more way past a guard rail.)
"""

from __future__ import annotations

import ast
import builtins
import dis
import sys
import types
from collections.abc import Callable
from typing import Any

# Top-level modules a snippet may import (submodules follow their package, minus DENIED_SUBMODULES).
ALLOWED_MODULES = frozenset(
    {
        "abc", "array", "bisect", "calendar", "cmath", "collections", "copy", "dataclasses",
        "datetime", "decimal", "enum", "fractions", "functools", "heapq", "itertools", "json",
        "math", "mpmath", "numbers", "numpy", "operator", "pprint", "random", "re", "scipy",
        "statistics", "string", "sympy", "sys", "textwrap", "time", "typing", "unicodedata",
        "warnings",
    }
)  # fmt: skip

# Submodules that exist to reach compilers, C pointers or test runners: no use for math.
DENIED_SUBMODULES = frozenset(
    {"numpy.ctypeslib", "numpy.distutils", "numpy.f2py", "numpy.testing", "sympy.utilities.autowrap"}
)

# Dunder attributes a snippet may use: the common, harmless ones (class bodies, printing types).
ALLOWED_DUNDERS = frozenset(
    {
        "__init__", "__name__", "__qualname__", "__doc__", "__class__", "__len__", "__iter__",
        "__next__", "__call__", "__repr__", "__str__", "__eq__", "__lt__", "__hash__",
        "__add__", "__sub__", "__mul__", "__truediv__", "__getitem__", "__setitem__",
        "__contains__", "__enter__", "__exit__", "__post_init__",
    }
)  # fmt: skip
ALLOWED_DUNDER_NAMES = frozenset({"__name__", "__doc__"})

# Non-dunder attributes that lead to frames, code objects and other modules' globals.
DENIED_ATTRIBUTES = frozenset(
    {
        "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame",
        "ag_code", "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "tb_frame",
        "tb_next", "co_code", "func_globals",
    }
)  # fmt: skip

MAX_RECURSION_LIMIT = 50_000

_IMPORT_NAME = dis.opmap["IMPORT_NAME"]


class SandboxPolicyError(Exception):
    """A snippet used something the sandbox does not offer (the message says what instead)."""

    # Tracebacks then read "SandboxPolicyError: ..." like any builtin error the model knows.
    __module__ = "builtins"


def attribute_refusal(name: str) -> str | None:
    """Why attribute `name` may not be used from a snippet, or None when it may."""
    if name.startswith("__") and name.endswith("__") and name not in ALLOWED_DUNDERS:
        return f"attribute '{name}' is not allowed in the sandbox (introspection of internals is blocked)"
    if name in DENIED_ATTRIBUTES:
        return f"attribute '{name}' is not allowed in the sandbox (frames and code objects are blocked)"
    return None


class _Checker(ast.NodeVisitor):
    def visit_Attribute(self, node: ast.Attribute) -> None:
        reason = attribute_refusal(node.attr)
        if reason:
            raise SandboxPolicyError(f"line {node.lineno}: {reason}")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name.startswith("__") and name.endswith("__") and name not in ALLOWED_DUNDER_NAMES:
            raise SandboxPolicyError(f"line {node.lineno}: name '{name}' is not available in the sandbox")
        self.generic_visit(node)


def check_source(source: str, filename: str = "<snippet>", mode: str = "exec") -> ast.AST:
    """Parse `source` and refuse dunder/frame introspection. Raises SyntaxError or SandboxPolicyError.

    Imports are checked at run time by the restricted `__import__` (so the error points at the line
    that imports, and `from x import y` inside functions is covered too).
    """
    tree = ast.parse(source, filename=filename, mode=mode)
    _Checker().visit(tree)
    return tree


def check_import(name: str, fromlist: Any = (), level: int = 0) -> None:
    """Raise ImportError with the allow-list when a snippet may not import `name`."""
    allowed = ", ".join(sorted(ALLOWED_MODULES))
    if level:
        raise ImportError("relative imports are not allowed in the sandbox")
    parts = name.split(".")
    if parts[0] not in ALLOWED_MODULES:
        raise ImportError(f"import of {name} is not allowed; allowed: {allowed}")
    private = [p for p in parts[1:] if p.startswith("_")]
    private += [f for f in (fromlist or ()) if isinstance(f, str) and f.startswith("_") and f != "*"]
    if private or any(name == d or name.startswith(d + ".") for d in DENIED_SUBMODULES):
        raise ImportError(f"import of {name} (or its private parts) is not allowed in the sandbox")


def is_import_statement(frame: types.FrameType) -> bool:
    """Whether `frame` is executing an `import` / `from ... import` statement at this moment
    (rather than a call, through which C code may be importing for itself)."""
    lasti = frame.f_lasti
    return lasti >= 0 and frame.f_code.co_code[lasti] == _IMPORT_NAME


def make_safe_sys() -> types.ModuleType:
    """A stand-in `sys` with the parts math code uses (recursion limit, int digits, float info)."""

    def setrecursionlimit(limit: int) -> None:
        sys.setrecursionlimit(max(100, min(int(limit), MAX_RECURSION_LIMIT)))

    safe = types.ModuleType("sys", "Sandboxed subset of sys.")
    for name in ("maxsize", "float_info", "int_info", "version", "version_info", "byteorder", "hash_info"):
        setattr(safe, name, getattr(sys, name))
    safe.setrecursionlimit = setrecursionlimit
    safe.getrecursionlimit = sys.getrecursionlimit
    safe.set_int_max_str_digits = sys.set_int_max_str_digits
    safe.get_int_max_str_digits = sys.get_int_max_str_digits
    safe.getsizeof = sys.getsizeof
    # print(..., file=sys.stdout) is common; these resolve to the worker's capture at call time.
    safe.__getattr__ = lambda name: _sys_stream(name)  # type: ignore[method-assign]
    return safe


def _sys_stream(name: str) -> Any:
    if name in ("stdout", "stderr"):
        return getattr(sys, name)
    raise AttributeError(f"sys.{name} is not available in the sandbox")


def _unavailable(name: str, hint: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise SandboxPolicyError(f"{name}() is not available in the sandbox: {hint}")

    refuse.__name__ = name
    return refuse


def make_builtins(session_globals: dict[str, Any]) -> dict[str, Any]:
    """Restricted builtins for one session: checked import/getattr/eval/exec, no I/O.

    `eval`/`exec` of strings are allowed but go through the same checks and run in the session's
    globals; code objects are refused (the policy cannot see inside them).
    """
    safe_sys = make_safe_sys()
    real_import = builtins.__import__

    def safe_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
        # Only the snippet's import statements are judged (see the module docstring); C code that
        # imports for itself from under a snippet frame gets the real module, `sys` included.
        if is_import_statement(sys._getframe(1)):
            check_import(name, fromlist, level)
            if name == "sys":
                return safe_sys
        return real_import(name, globals, locals, fromlist, level)

    def _check_name(name: Any) -> None:
        if isinstance(name, str):
            reason = attribute_refusal(name)
            if reason:
                raise SandboxPolicyError(reason)

    def safe_getattr(obj, name, *default):
        _check_name(name)
        return getattr(obj, name, *default)

    def safe_hasattr(obj, name):
        _check_name(name)
        return hasattr(obj, name)

    def safe_setattr(obj, name, value):
        _check_name(name)
        return setattr(obj, name, value)

    def safe_delattr(obj, name):
        _check_name(name)
        return delattr(obj, name)

    def _compile_checked(source: Any, mode: str):
        if not isinstance(source, str):
            raise SandboxPolicyError("eval()/exec() accept source strings only in the sandbox")
        check_source(source, "<string>", mode)
        return compile(source, "<string>", mode)

    def _scope(glb, loc):
        glb = session_globals if glb is None else glb
        glb["__builtins__"] = restricted  # never let a caller-supplied dict fall back to real builtins
        return glb, (glb if loc is None else loc)

    def safe_eval(source, globals=None, locals=None):  # noqa: A002 - the builtin's signature
        return eval(_compile_checked(source, "eval"), *_scope(globals, locals))  # noqa: S307 - checked source, restricted builtins

    def safe_exec(source, globals=None, locals=None):  # noqa: A002 - the builtin's signature
        exec(_compile_checked(source, "exec"), *_scope(globals, locals))  # noqa: S102 - as above

    restricted = dict(vars(builtins))
    for name in ("breakpoint", "help", "exit", "quit", "copyright", "credits", "license", "__loader__",
                 "__spec__"):  # fmt: skip
        restricted.pop(name, None)
    restricted.update(
        __import__=safe_import,
        getattr=safe_getattr,
        hasattr=safe_hasattr,
        setattr=safe_setattr,
        delattr=safe_delattr,
        eval=safe_eval,
        exec=safe_exec,
        open=_unavailable("open", "there is no file I/O; keep data in variables"),
        input=_unavailable("input", "there is no stdin; put the data in the code"),
        compile=_unavailable("compile", "use exec() or eval() on a source string"),
        vars=_unavailable("vars", "use dir() to list attributes"),
    )
    return restricted


def new_session_globals() -> dict[str, Any]:
    """Fresh globals for one session: `__name__ == "__main__"` and the restricted builtins."""
    glb: dict[str, Any] = {"__name__": "__main__", "__doc__": None}
    glb["__builtins__"] = make_builtins(glb)
    return glb
