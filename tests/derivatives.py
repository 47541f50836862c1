"""Forward-mode and second derivatives against float64 central differences.

``jax.test_util.check_grads(order=2)`` compiles a dozen programs per
function; this compiles two: the value, its ``jvp``, the gradient and the
Hessian-vector product (forward over reverse, what ``jax.hessian`` and
``jacfwd(jacrev)`` run) in one, and the value and gradient alone for the
differences.
"""

import jax
import numpy as np

from helpers import jit_fast


def check_derivatives(f, args, directions=2, eps=1e-5, rtol=1e-6,
                      atol=1e-8):
  """``f(*args)``'s jvp and Hessian-vector products along random directions.

  ``args`` are pytrees of arrays. Call under ``jax.enable_x64(True)`` with
  float64 ``args``. Checks that the
  jvp is the central difference of ``f`` and that the Hessian-vector product
  is the central difference of the gradient, both finite.
  """
  argnums = tuple(range(len(args)))
  value_and_grad = jax.value_and_grad(f, argnums=argnums)

  @jit_fast
  def forward(args, v):
    return jax.jvp(lambda *a: value_and_grad(*a), args, v)

  at = jit_fast(lambda args: value_and_grad(*args))
  rng = np.random.default_rng(7)
  for _ in range(directions):
    v = jax.tree.map(lambda a: rng.normal(size=np.shape(a)), args)
    (_, _), (jvp, hvp) = forward(args, v)
    plus = at(jax.tree.map(lambda a, d: a + eps * d, args, v))
    minus = at(jax.tree.map(lambda a, d: a - eps * d, args, v))
    np.testing.assert_allclose(jvp, (plus[0] - minus[0]) / (2 * eps),
                               rtol=rtol, atol=atol, err_msg="jvp")
    for h, p, m in zip(*map(jax.tree.leaves, (hvp, plus[1], minus[1]))):
      assert np.all(np.isfinite(h))
      np.testing.assert_allclose(h, (p - m) / (2 * eps), rtol=max(rtol, 1e-5),
                                 atol=max(atol, 1e-6), err_msg="hvp")
