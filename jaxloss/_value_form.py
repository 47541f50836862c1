"""One function in two forms: arithmetic for its value, selects for its
derivatives.

XLA:CPU hands an elementwise computation that ends in a reduction to a
library (YNNPACK) that fuses arithmetic (``+ - * /``, ``max``, ``min``,
``abs``, ``sign``, ``sqrt``, ``log``, ``exp``, ...) with the sum, but no
select or comparison: a single ``jnp.where`` makes it compile one more loop
and write every term to memory before summing them. The selects that guard
an edge case (a negative variance, a zero vector's norm) are still the
clearest way to state the derivatives, which must never meet ``0 * inf``.
"""

import jax
from jax.custom_derivatives import SymbolicZero


def value_form(fast):
  """Decorates ``exact``: its value alone is ``fast(*args)``; under
  differentiation (any order, any mode) it is ``exact``, value included.

  ``fast`` must give ``exact``'s values, its selects written as arithmetic.
  Under differentiation the program is the one autodiff of ``exact`` makes,
  unchanged. Arguments are arrays (or None); a non-differentiated one
  costs no tangent.
  """
  def wrap(exact):
    f = jax.custom_jvp(fast)

    def rule(primals, tangents):
      # JAX calls the rule only when some tangent is not zero.
      live = [not isinstance(t, SymbolicZero) for t in tangents]

      def moving(*args):
        it = iter(args)
        return exact(*(next(it) if m else p for p, m in zip(primals, live)))

      return jax.jvp(moving, [p for p, m in zip(primals, live) if m],
                     [t for t, m in zip(tangents, live) if m])

    f.defjvp(rule, symbolic_zeros=True)
    f.__doc__ = exact.__doc__
    return f
  return wrap
