"""Bridge that lets `mathematics-dataset` 1.0.1 run, reproducibly, on current sympy and numpy 2.

DeepMind's generator was last released in 2019 and breaks on the libraries that
torch needs, which we cannot pin back. Call `install()` before importing anything
from `mathematics_dataset`; it is idempotent and cheap after the first call:

    from rstar_math.data import _mathds_compat
    _mathds_compat.install()
    from mathematics_dataset.modules import modules

Breakages, all found by generating from every train module at every difficulty
(see tests/test_generate.py), and what each shim does:

1. `mathematics_dataset/sample/polynomials.py` does
   `from sympy.solvers.diophantine import base_solution_linear`. Since sympy 1.6
   `sympy.solvers.diophantine` is a package whose `__init__` does not re-export
   that function; it lives in `sympy.solvers.diophantine.diophantine` with the
   same signature `(c, a, b, t=None)`. We add the name to the package, where the
   import looks (ImportError on import of any module otherwise).
2. Same file, `np.object` in `expand_coefficients` and `coefficients_linear_split`:
   the alias was removed in numpy 1.24; the builtin `object` is the same dtype.
3. Same file, `ndarray.itemset` in `sample_coefficients` and `expand_coefficients`:
   removed in numpy 2.0. `ndarray` is an immutable C type, so the method cannot
   be put back; the full-index assignment `a[index] = v` stores the same element
   (a list too, into an object array).
   Without 2 and 3 the polynomials__*, calculus__differentiate* and
   algebra__polynomial_roots_composed modules raise AttributeError.
4. `modules/numbers.py` `round_number` calls `random.randint` with float bounds
   (`remainder_divisor / 2`). Python 3.10 and 3.11 warn (DeprecationWarning),
   3.12 raises TypeError, so numbers__round_number* fail there. The divisor is
   10**n with n >= 1, so floor division gives the same values as ints, and the
   same draws as 3.11 made.

Reproducibility (not a crash, but seeding `random` and `np.random` alone does not
make a run repeat in another process):

5. `util/composition.py` `Context.pop` picks a variable letter with
   `random.choice(list(allowed))`, `allowed` a set of str: its order follows
   PYTHONHASHSEED. We choose from `sorted(allowed)` (same distribution).
6. Same file, `expand_entities` collects entities in a `set` of objects hashed by
   memory address before `random.shuffle`, so composed questions differ between
   runs. We collect them in an insertion-ordered dict (same distribution).

Seeding stays the caller's job, and takes three generators: `random`, `np.random`
and `sympy.core.random.rng`, from which current sympy's `randprime` draws (the
2019 sympy used `random`); numbers__is_prime* depend on it. See generate.py.

Shim 1 only adds a name to a sympy package. The others change nothing outside
mathematics_dataset (a global `np.object` would change what other libraries'
feature checks see): each affected function is recompiled from upstream's own
source with exactly the text edits in `_FIXES`, in the upstream module's
namespace, and replaces the original there; callers look it up through that
module or class at call time, so they all get the fixed copy. If an edit does
not match, the installed package is not the 1.0.1 we bridge and `install()`
raises ImportError.
"""

from __future__ import annotations

import importlib
import inspect
import textwrap
from dataclasses import dataclass
from types import FunctionType

__all__ = ["install"]


@dataclass(frozen=True)
class _SourceFix:
    """Replace `module.qualname` by a copy compiled from its source with `edits` applied."""

    module: str
    qualname: str  # "function" or "Class.method"
    edits: tuple[tuple[str, str], ...]  # (upstream text, replacement), each must occur


_FIXES = (
    _SourceFix(  # shim 3
        "mathematics_dataset.sample.polynomials",
        "sample_coefficients",
        (("coeffs.itemset(index, value)", "coeffs[index] = value"),),
    ),
    _SourceFix(  # shims 2 and 3
        "mathematics_dataset.sample.polynomials",
        "expand_coefficients",
        (
            ("dtype=np.object)", "dtype=object)"),
            ("expanded_coefficients.itemset(power, coeffs)", "expanded_coefficients[power] = coeffs"),
        ),
    ),
    _SourceFix(  # shim 2 (both arrays)
        "mathematics_dataset.sample.polynomials",
        "coefficients_linear_split",
        (("dtype=np.object)", "dtype=object)"),),
    ),
    _SourceFix(  # shim 4
        "mathematics_dataset.modules.numbers",
        "round_number",
        (
            ("remainder_range_lower = -remainder_divisor / 2", "remainder_range_lower = -remainder_divisor // 2"),
            ("remainder_range_upper = remainder_divisor / 2", "remainder_range_upper = remainder_divisor // 2"),
        ),
    ),
    _SourceFix(  # shim 5
        "mathematics_dataset.util.composition",
        "Context.pop",
        (("random.choice(list(allowed))", "random.choice(sorted(allowed))"),),
    ),
    _SourceFix(  # shim 6
        "mathematics_dataset.util.composition",
        "expand_entities",
        (
            ("entities = set(context.child_entities)", "entities = dict.fromkeys(context.child_entities)"),
            ("entities.add(maybe_entity)", "entities[maybe_entity] = None"),
        ),
    ),
)

# Set on each replacement, so a second install() leaves it alone.
_MARK = "_rstar_math_compat"


def _bridge_diophantine() -> None:
    """Shim 1: make `from sympy.solvers.diophantine import base_solution_linear` work."""
    package = importlib.import_module("sympy.solvers.diophantine")
    if not hasattr(package, "base_solution_linear"):
        implementation = importlib.import_module("sympy.solvers.diophantine.diophantine")
        package.base_solution_linear = implementation.base_solution_linear


def _apply(fix: _SourceFix) -> None:
    module = importlib.import_module(fix.module)
    *owner_path, name = fix.qualname.split(".")
    owner = module
    for attribute in owner_path:
        owner = getattr(owner, attribute)
    original = getattr(owner, name)
    if getattr(original, _MARK, False):
        return
    source = textwrap.dedent(inspect.getsource(original))
    for old, new in fix.edits:
        if old not in source:
            raise ImportError(
                f"rstar_math.data._mathds_compat: {fix.module}.{fix.qualname} does not contain {old!r}; "
                "these shims are written for mathematics-dataset==1.0.1"
            )
        source = source.replace(old, new)
    # Same file name and line numbers as upstream, so tracebacks point at the package's source.
    source = "\n" * (original.__code__.co_firstlineno - 1) + source
    filename = inspect.getsourcefile(original) or fix.module
    namespace: dict[str, object] = {}
    exec(compile(source, filename, "exec", dont_inherit=True), module.__dict__, namespace)
    fixed = namespace[name]
    assert isinstance(fixed, FunctionType)
    fixed.__qualname__ = original.__qualname__
    setattr(fixed, _MARK, True)
    setattr(owner, name, fixed)


def install() -> None:
    """Apply all shims (idempotent). Call before the first import of `mathematics_dataset`."""
    _bridge_diophantine()
    for fix in _FIXES:
        _apply(fix)
