"""Forward-mode and second derivatives against float64 central differences.

``jax.test_util.check_grads(order=2)`` compiles a dozen programs per
function; this compiles two: the ``jvp`` and the Hessian-vector product both
forward over reverse (what ``jax.hessian`` and ``jacfwd(jacrev)`` run) and
reverse over reverse (``grad`` of ``grad``) in one, and the value and
gradient alone for the differences.
"""

import jax
import jax.numpy as jnp
import numpy as np

from helpers import jit_fast


def check_derivatives(f, args, directions=2, eps=1e-5, rtol=1e-6,
                      atol=1e-8):
  """``f(*args)``'s jvp and Hessian-vector products along random directions.

  ``args`` are pytrees of arrays. Call under ``jax.enable_x64(True)`` with
  float64 ``args``. Checks that the jvp is the central difference of ``f``,
  and that both Hessian-vector products are finite and the central
  difference of the gradient.
  """
  argnums = tuple(range(len(args)))
  value_and_grad = jax.value_and_grad(f, argnums=argnums)

  @jit_fast
  def derivatives(args, v):
    (_, _), (jvp, hvp) = jax.jvp(value_and_grad, args, v)

    def along_v(*a):
      return sum(jnp.vdot(g, d) for g, d in zip(
          jax.tree.leaves(value_and_grad(*a)[1]), jax.tree.leaves(v)))

    return jvp, hvp, jax.grad(along_v, argnums=argnums)(*args)

  at = jit_fast(lambda args: value_and_grad(*args))
  rng = np.random.default_rng(7)
  for _ in range(directions):
    v = jax.tree.map(lambda a: rng.normal(size=np.shape(a)), args)
    jvp, forward, reverse = derivatives(args, v)
    plus = at(jax.tree.map(lambda a, d: a + eps * d, args, v))
    minus = at(jax.tree.map(lambda a, d: a - eps * d, args, v))
    np.testing.assert_allclose(jvp, (plus[0] - minus[0]) / (2 * eps),
                               rtol=rtol, atol=atol, err_msg="jvp")
    differences = jax.tree.map(lambda p, m: (p - m) / (2 * eps), plus[1],
                               minus[1])
    for what, hvp in (("forward over reverse", forward),
                      ("reverse over reverse", reverse)):
      for got, want in zip(jax.tree.leaves(hvp),
                           jax.tree.leaves(differences)):
        assert np.all(np.isfinite(got)), what
        np.testing.assert_allclose(got, want, rtol=max(rtol, 1e-5),
                                   atol=max(atol, 1e-6), err_msg=what)
