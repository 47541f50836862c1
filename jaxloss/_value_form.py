"""One function in two forms: arithmetic for its value, selects for its
derivatives.

XLA:CPU hands an elementwise computation that ends in a reduction to a
library (YNNPACK) that fuses arithmetic (``+ - * /``, ``max``, ``min``,
``abs``, ``sign``, ``sqrt``, ``log``, ``exp``, ...) with the sum, but no
select or comparison: a single ``jnp.where`` makes it compile one more loop
and write every term to memory before summing them. The selects that guard
an edge case (a negative variance, a zero vector's norm) are still the
clearest way to state the derivatives, which must never meet ``0 * inf``.
Where a guard is needed only against ``0 * inf``, :func:`unless_nan` runs
the plain formula and the guarded one only for input where that is NaN.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxloss import _jit


def value_form(fast, differentiated_value=False):
  """Decorates ``exact``: its value alone is ``fast(*args)``; under
  differentiation (any order, any mode) it is ``exact``, value included.

  ``fast`` must give ``exact``'s values, its selects written as arithmetic.
  Under differentiation the program is the one autodiff of ``exact`` makes,
  unchanged. Arguments are arrays (or None); a non-differentiated one
  costs no tangent. With ``differentiated_value`` the value is ``fast``'s
  under differentiation too (itself differentiated as ``exact``): for a
  ``fast`` that is not autodiff's to differentiate (a ``lax.cond`` under
  :func:`unless_nan`), and whose value costs less than ``exact``'s there.
  """
  def wrap(exact):
    f = jax.custom_jvp(fast)

    def rule(primals, tangents):
      # JAX calls the rule only when some tangent is not zero.
      live = [not isinstance(t, SymbolicZero) for t in tangents]

      def moving(*args):
        it = iter(args)
        return exact(*(next(it) if m else p for p, m in zip(primals, live)))

      out, tangent = jax.jvp(moving, [p for p, m in zip(primals, live) if m],
                             [t for t, m in zip(tangents, live) if m])
      return (f(*primals) if differentiated_value else out), tangent

    f.defjvp(_jit.inlined(rule), symbolic_zeros=True)
    f.__doc__ = exact.__doc__
    return f
  return wrap


def unless_nan(fast, exact, *args, finite=False):
  """``fast(*args)``, or ``exact(*args)`` where that holds a NaN (with
  ``finite``: where it is not finite).

  For a guard that only ``0 * inf`` needs: ``fast`` is the plain formula,
  exact wherever it is not NaN; ``exact`` is the guarded one, whose terms
  are ``fast``'s wherever those are not NaN. One scalar condition on the
  sum of the first output (a tuple's later ones are the same in both
  forms) picks the branch, so that input without a NaN term costs the
  plain formula and a NaN term, the guarded one besides (a NaN in the input
  too: both are NaN there). On XLA:CPU a guard on every term costs its
  fused sum about as much again as the formula's own terms.

  With ``finite`` ``fast`` need be exact only where its sum is finite: a
  form whose edge case makes a term infinite (a plain sum over classes
  that should leave some out); an infinite loss then costs both forms.

  Under ``jax.vmap`` the condition is taken over the whole batch (a batched
  ``lax.cond`` would run both). Never differentiated itself: for a
  ``custom_jvp``'s primal, or :func:`value_form`'s ``fast``. ``args`` are
  arrays or None (passed on as None).
  """
  if any(a is None for a in args):
    slots = [a is not None for a in args]

    def bind(fn):
      def call(*given):
        it = iter(given)
        return fn(*(next(it) if s else None for s in slots))
      return call

    return unless_nan(bind(fast), bind(exact),
                      *(a for a in args if a is not None), finite=finite)

  @jax.custom_batching.custom_vmap
  def pick(*args):
    out = fast(*args)
    # The barrier keeps XLA from folding the sum of row sums into one sum
    # of the terms, which it would then write out.
    probe = jnp.sum(lax.optimization_barrier(jax.tree.leaves(out)[0]))
    odd = ~jnp.isfinite(probe) if finite else probe != probe
    return lax.cond(odd, lambda: exact(*args), lambda: out)

  @pick.def_vmap
  @_jit.inlined
  def rule(axis_size, in_batched, *args):
    del axis_size
    axes = tuple(0 if b else None for b in in_batched)
    out = unless_nan(jax.vmap(fast, axes), jax.vmap(exact, axes), *args,
                     finite=finite)
    return out, jax.tree.map(lambda _: True, out)

  return pick(*args)


def plain_value(plain, exact, *args, finite=False, guarded=None):
  """``exact(*args)``; on CPUs its value, differentiated or not, is
  ``plain(*args)`` unless that is NaN (with ``finite``: not finite), then
  ``guarded(*args)`` (``exact`` by default): :func:`unless_nan`, under
  :func:`value_form` with ``differentiated_value``. The derivatives are
  ``exact``'s, at every order (a second derivative differentiates
  ``exact``'s, never the condition, which reverse mode cannot linearize).

  Elsewhere ``exact`` alone: GPUs fuse the guards, and a condition is a
  synchronization. ``args`` are arrays or None.
  """
  if jax.default_backend() != "cpu":
    return exact(*args)
  fallback = exact if guarded is None else guarded
  return value_form(
      lambda *a: unless_nan(plain, fallback, *a, finite=finite),
      differentiated_value=True)(exact)(*args)
