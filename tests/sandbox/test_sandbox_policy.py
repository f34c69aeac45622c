"""Pure-Python parts of the sandbox (no processes): policy rules, output bounding, error text."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from deep_math.sandbox.oslimits import Layers
from deep_math.sandbox.policy import (
    SandboxPolicyError,
    attribute_refusal,
    check_import,
    check_source,
    new_session_globals,
)
from deep_math.sandbox.sandbox import require_network_isolation
from deep_math.sandbox.worker import BoundedWriter, WorkerSession


@pytest.mark.parametrize("name", ["math", "numpy.linalg", "sympy.parsing.sympy_parser", "scipy.optimize"])
def test_allowed_imports(name):
    check_import(name)


@pytest.mark.parametrize(
    "name, fromlist",
    [("os", ()), ("numpy.f2py", ()), ("numpy._core", ()), ("numpy", ("_core",)), ("ctypes", ())],
)
def test_refused_imports(name, fromlist):
    with pytest.raises(ImportError, match="not allowed"):
        check_import(name, fromlist)


def test_refused_import_lists_the_allowed_modules():
    with pytest.raises(ImportError, match=r"import of os is not allowed; allowed: .*numpy.*sympy"):
        check_import("os")


def test_imports_a_library_makes_for_itself_are_not_judged():
    # CPython's PyImport_Import (C code importing, e.g. numpy's ndarray.__str__ loading
    # numpy._core.arrayprint) takes __import__ from the innermost Python frame's builtins: under a
    # snippet frame that is the restricted one, called from a frame executing a call, not an import.
    glb = new_session_globals()
    restricted_import = glb["__builtins__"]["__import__"]
    assert restricted_import("numpy._core.arrayprint", glb, glb, [], 0).__name__ == "numpy"
    assert restricted_import("os", glb, glb, [], 0) is os
    assert restricted_import("sys", glb, glb, [], 0) is sys  # C code gets the real sys


@pytest.mark.parametrize(
    "code, refused",
    [
        ("import numpy._core", "numpy._core"),
        ("from numpy import _core", "numpy"),
        ("def f():\n    import os\nf()", "os"),
        ("exec('import shutil')", "shutil"),
    ],
)
def test_import_statements_of_the_snippet_are_judged(code, refused):
    result = WorkerSession(2000).run(code)
    assert result["error"] is not None and f"ImportError: import of {refused} " in result["error"]


def test_import_sys_statement_gets_the_sandboxed_sys():
    result = WorkerSession(2000).run("import sys\nsys.path")
    assert "sys.path is not available in the sandbox" in result["error"]


@pytest.mark.parametrize("attr", ["__subclasses__", "__globals__", "__builtins__", "gi_frame", "f_back"])
def test_introspection_attributes_are_refused(attr):
    assert attribute_refusal(attr) is not None
    with pytest.raises(SandboxPolicyError):
        check_source(f"x.{attr}")


@pytest.mark.parametrize("attr", ["__init__", "__name__", "_private", "real", "shape"])
def test_ordinary_attributes_are_allowed(attr):
    assert attribute_refusal(attr) is None


def test_bounded_writer_keeps_head_and_tail():
    w = BoundedWriter(100)
    for i in range(10_000):
        w.write(f"{i}\n")
    out = w.getvalue()
    assert out.startswith("0\n1\n") and out.endswith("9999\n")
    assert "[output truncated:" in out and len(out) < 200


def test_bounded_writer_small_output_is_exact():
    w = BoundedWriter(100)
    w.write("hello\n")
    assert w.getvalue() == "hello\n"


def test_in_process_session_error_text():
    # The worker's executor, run here without the OS layers: only the error formatting is checked.
    result = WorkerSession(2000).run("def f(x):\n    return 1 / x\nf(0)")
    assert 'File "<cell 1>", line 3' in result["error"] and "line 2, in f" in result["error"]
    assert result["error"].rstrip().endswith("ZeroDivisionError: division by zero")


def test_without_network_isolation_the_sandbox_refuses_to_start():
    with pytest.raises(RuntimeError, match="allow_degraded_network"):
        require_network_isolation(Layers(netns=False, seccomp=False, landlock_abi=0), allow_degraded=False)


def test_degraded_network_is_allowed_only_explicitly_and_logged(caplog):
    with caplog.at_level(logging.WARNING):
        require_network_isolation(Layers(), allow_degraded=True)
    assert "WITHOUT network isolation" in caplog.text
    require_network_isolation(Layers(netns=True), allow_degraded=False)
