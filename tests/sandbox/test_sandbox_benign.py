"""Benign model-written math code prints in the sandbox exactly as it does in plain Python.

One row per thing model code really does with results: print/str/repr/f-strings of numpy arrays
(1-D, 2-D, matrices, set_printoptions), numpy scalars, linear-algebra results, scipy results,
sympy objects, matrices, solutions and pretty printing, fractions and decimals, and containers of
these. A row's expected stdout is a literal where it is short and stable; `REF` rows are compared
with the same snippet run here, in plain CPython with the same libraries (floats from eig/quad,
unicode pretty printing), so any difference the sandbox makes to what benign code prints fails.
Every row runs in a fresh session: the first print of a numpy array in a worker is the one that
configures numpy's printing.
"""

from __future__ import annotations

import ast
import decimal
import io
import sys
import textwrap

import numpy as np
import pytest

from deep_math.sandbox import Sandbox

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

REF = object()  # expected output: the snippet's output in plain CPython, computed in this process

NP = "import numpy as np\n"
SP = "import sympy as sp\nx, y = sp.symbols('x y')\n"

ROWS = [
    # --- numpy arrays and matrices
    ("array_1d", NP + "print(np.array([1, 2, 3]))", "[1 2 3]\n"),
    ("array_2d_float", NP + "print(np.array([[1.5, 2], [3, 4]]))", "[[1.5 2. ]\n [3.  4. ]]\n"),
    ("array_str", NP + "s = str(np.arange(4))\nprint(s, len(s))", "[0 1 2 3] 9\n"),
    ("array_repr_2d", NP + "np.arange(6).reshape(2, 3)", "array([[0, 1, 2],\n       [3, 4, 5]])"),
    ("array_in_fstring", NP + "a = np.array([0.5, 0.25])\nprint(f'a = {a}, sum = {a.sum()}')", "a = [0.5  0.25], sum = 0.75\n"),
    ("array_bool_complex", NP + "print(np.array([True, False]))\nprint(np.array([1 + 2j, 3 - 1j]))", "[ True False]\n[1.+2.j 3.-1.j]\n"),
    ("matrix", NP + "m = np.matrix([[1, 2], [3, 4]])\nprint(m)\nprint(m * m)", "[[1 2]\n [3 4]]\n[[ 7 10]\n [15 22]]\n"),
    ("set_printoptions_precision", NP + "np.set_printoptions(precision=3, suppress=True)\nprint(np.array([1 / 3, 2e-10, 5.0]))", "[0.333 0.    5.   ]\n"),
    ("set_printoptions_threshold", NP + "np.set_printoptions(threshold=5)\nprint(np.arange(10))", "[0 1 2 ... 7 8 9]\n"),
    ("printoptions_context", NP + "with np.printoptions(precision=2):\n    print(np.array([np.pi, np.e]))\nprint(np.array([0.5]))", "[3.14 2.72]\n[0.5]\n"),
    ("array2string", NP + "print(np.array2string(np.array([1, 2, 3]), separator=', '))", "[1, 2, 3]\n"),
    ("large_array_summary", NP + "print(np.arange(2000).reshape(40, 50).sum(axis=0)[:5])", "[39000 39040 39080 39120 39160]\n"),
    ("roots", NP + "print(np.roots([1, -3, 2]))", "[2. 1.]\n"),
    ("polyfit", NP + "print(np.polyfit([0, 1, 2], [1, 3, 5], 1).round(6))", "[2. 1.]\n"),
    # --- numpy scalars
    ("numpy_scalars", NP + "print(np.float64(0.1) + np.float64(0.2), np.int64(7), np.float32(1 / 3))", REF),
    ("numpy_scalar_repr", NP + "print([np.float64(1.5), np.int64(2)])\nprint(repr(np.float64(2.0)))", REF),
    ("numpy_scalar_format", NP + "print(f'{np.float64(2 / 3):.4f} {np.int64(42):05d} {np.pi:.2e}')", "0.6667 00042 3.14e+00\n"),
    ("numpy_stats", NP + "d = np.array([2, 4, 4, 4, 5, 5, 7, 9])\nprint(d.mean(), d.std(), np.median(d))", "5.0 2.0 4.5\n"),
    # --- numpy.linalg
    ("linalg_inv", NP + "print(np.linalg.inv(np.array([[2.0, 1.0], [1.0, 3.0]])))", REF),
    ("linalg_det", NP + "print(np.linalg.det(np.array([[2.0, 1.0], [1.0, 3.0]])))", REF),
    ("linalg_eig", NP + "w, v = np.linalg.eig(np.array([[2.0, 0.0], [0.0, 3.0]]))\nprint(w)\nprint(v)", "[2. 3.]\n[[1. 0.]\n [0. 1.]]\n"),
    ("linalg_eig_general", NP + "w, v = np.linalg.eig(np.array([[4.0, 1.0], [2.0, 3.0]]))\nprint(w)\nprint(v)", REF),
    ("linalg_solve", NP + "print(np.linalg.solve(np.array([[2.0, 1.0], [1.0, 3.0]]), np.array([3.0, 5.0])))", REF),
    ("linalg_norm_rank", NP + "a = np.array([[1, 2], [2, 4]])\nprint(np.linalg.matrix_rank(a), np.linalg.norm([3, 4]))", "1 5.0\n"),
    # --- scipy
    ("scipy_minimize", "from scipy.optimize import minimize\nres = minimize(lambda v: (v[0] - 3) ** 2 + (v[1] + 1) ** 2, [0.0, 0.0])\nprint(res.x.round(4), res.success)", "[ 3. -1.] True\n"),
    ("scipy_minimize_result", "from scipy.optimize import minimize_scalar\nprint(minimize_scalar(lambda t: (t - 2) ** 2))", REF),
    ("scipy_fsolve", "from scipy.optimize import fsolve\nprint(fsolve(lambda t: t ** 2 - 2, 1.0))", REF),
    ("scipy_brentq", "from scipy import optimize\nprint(f'{optimize.brentq(lambda t: t ** 3 - 2, 0, 2):.9f}')", "1.259921050\n"),
    ("scipy_quad", "from scipy.integrate import quad\nprint(quad(lambda t: t ** 2, 0, 3))", REF),
    ("scipy_odeint", "import numpy as np\nfrom scipy.integrate import odeint\nprint(odeint(lambda y, t: -y, 1.0, [0, 1]).round(6))", "[[1.      ]\n [0.367879]]\n"),
    ("scipy_special", "from scipy import special\nprint(special.comb(10, 3, exact=True), special.gamma(5), special.binom(5, 2))", "120 24.0 10.0\n"),
    ("scipy_stats", "from scipy import stats\nprint(stats.norm.cdf(1.96))\nprint(stats.binom.pmf(3, 10, 0.5))", REF),
    ("scipy_linregress", "from scipy import stats\nprint(stats.linregress([0, 1, 2, 3], [1, 3, 5, 7]))", REF),
    # --- sympy
    ("sympy_solve", SP + "print(sp.solve(x**2 - 5*x + 6, x))", "[2, 3]\n"),
    ("sympy_solve_system", SP + "print(sp.solve([x + y - 3, x - y - 1], [x, y]))", "{x: 2, y: 1}\n"),
    ("sympy_solveset", SP + "print(sp.solveset(x**2 - 4, x))", "{-2, 2}\n"),
    ("sympy_expressions", SP + "print(sp.expand((x + 1)**3))\nprint(sp.factor(x**2 - y**2))\nprint(sp.sqrt(8), sp.Rational(3, 4) + sp.Rational(1, 6))", "x**3 + 3*x**2 + 3*x + 1\n(x - y)*(x + y)\n2*sqrt(2) 11/12\n"),
    ("sympy_matrix", SP + "m = sp.Matrix([[1, 2], [3, 4]])\nprint(m)\nprint(m.inv())\nprint(m.det(), m.eigenvals())", REF),
    ("sympy_calculus", SP + "print(sp.integrate(sp.sin(x)**2, (x, 0, sp.pi)), sp.diff(x**3, x), sp.limit(sp.sin(x)/x, x, 0))", "pi/2 3*x**2 1\n"),
    ("sympy_numeric", SP + "print(sp.N(sp.pi, 30))\nprint(sp.nsimplify(0.75), float(sp.sqrt(2)))", "3.14159265358979323846264338328\n3/4 1.4142135623730951\n"),
    ("sympy_fstring", SP + "r = sp.Rational(1, 3)\nprint(f'{r} ~ {float(r):.5f}; {sp.N(sp.pi, 5)}; {sp.Float(2.5):.2f}')", REF),
    ("sympy_number_theory", SP + "print(sp.factorint(360), sp.isprime(97), list(sp.primerange(10, 30)))", REF),
    ("sympy_pprint", SP + "sp.pprint(sp.Integral(sp.sqrt(x), x))\nsp.pprint(sp.Matrix([[1, x], [y, 2]]))", REF),
    ("sympy_pretty", SP + "print(sp.pretty(sp.Rational(1, 2) + x**2))\nprint(sp.pretty(x**2, use_unicode=False))", REF),
    ("sympy_latex", SP + "print(sp.latex(sp.sqrt(2) / 2))\nprint(sp.latex(sp.Matrix([[1, 0], [0, 1]])))", REF),
    ("sympy_init_printing", SP + "sp.init_printing()\nprint(sp.sqrt(x))", "sqrt(x)\n"),
    ("sympy_final_expression", SP + "sp.Eq(x + 1, 3)", "Eq(x + 1, 3)"),
    # --- fractions, decimals, math
    ("fraction", "from fractions import Fraction\nf = Fraction(1, 3) + Fraction(1, 6)\nprint(f, repr(f), f'{Fraction(3, 4)}', [f])", "1/2 Fraction(1, 2) 3/4 [Fraction(1, 2)]\n"),
    ("decimal", "from decimal import Decimal, getcontext\ngetcontext().prec = 40\nprint(Decimal(1) / Decimal(7))\nprint(f\"{Decimal('1.2345'):.2f}\", [Decimal('0.1')])", "0.1428571428571428571428571428571428571429\n1.23 [Decimal('0.1')]\n"),
    ("math_format", "import math\nprint(math.factorial(20), math.gcd(12, 18), f'{math.pi:.10f}', f'{2**0.5:>10.3f}|', f'{1234567:,}')", "2432902008176640000 6 3.1415926536      1.414| 1,234,567\n"),
    # --- containers of these
    ("mixed_tuple", NP + SP + "from fractions import Fraction\nfrom decimal import Decimal\nprint((Fraction(1, 2), Decimal('0.5'), sp.Rational(1, 2), np.float64(0.5)))", REF),
    ("dict_of_arrays", NP + "print({'a': np.array([1, 2]), 'b': np.eye(2)})", REF),
    ("list_of_sympy", SP + "print([sp.sqrt(2), sp.pi / 2, x**2])\nprint({x: sp.Rational(1, 2)})", "[sqrt(2), pi/2, x**2]\n{x: 1/2}\n"),
    ("pprint_module", "import pprint\npprint.pprint({'roots': [1, 2, 3], 'n': 3, 'name': 'quadratic'})", "{'n': 3, 'name': 'quadratic', 'roots': [1, 2, 3]}\n"),
]  # fmt: skip


class _Utf8Out(io.StringIO):
    encoding = "utf-8"  # as the worker's capture: sympy chooses unicode pretty printing from it


def reference_output(code: str) -> str:
    """What `code` prints in plain CPython here (notebook-style: a final expression's repr too).

    Global print state the snippet may change (numpy print options, the decimal context, sympy's
    displayhook) is restored afterwards, so rows do not leak into each other or other tests."""
    tree = ast.parse(code)
    last = (
        ast.Expression(tree.body.pop().value) if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    )
    out = _Utf8Out()
    saved = np.get_printoptions(), decimal.getcontext(), sys.displayhook, sys.stdout
    decimal.setcontext(decimal.Context())
    sys.stdout = out
    try:
        glb: dict = {"__name__": "__main__"}
        exec(compile(tree, "<reference>", "exec"), glb)  # noqa: S102 - the unsandboxed reference run of a benign corpus
        if last is not None:
            value = eval(compile(last, "<reference>", "eval"), glb)  # noqa: S307 - as above
            if value is not None:
                out.write(repr(value))
    finally:
        np.set_printoptions(**saved[0])
        decimal.setcontext(saved[1])
        sys.displayhook, sys.stdout = saved[2], saved[3]
    return out.getvalue()


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(timeout=20.0, memory_mb=2048, max_output_chars=4000) as sb:
        yield sb


@pytest.mark.parametrize("code, expected", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_benign_output_is_exact(sandbox, code, expected):
    session = sandbox.session()
    try:
        result = session.run(code)
    finally:
        session.close()
    assert result.kind == "ok", result.error
    want = reference_output(code) if expected is REF else expected
    assert want.strip(), f"row has no expected output:\n{textwrap.indent(code, '  ')}"
    assert result.output == want


@pytest.mark.parametrize(
    "code, expected", [r[1:] for r in ROWS if r[2] is not REF], ids=[r[0] for r in ROWS if r[2] is not REF]
)
def test_literal_rows_match_plain_python(code, expected):
    # Keeps the literal expectations honest: they are what these libraries print outside the sandbox.
    assert reference_output(code) == expected
