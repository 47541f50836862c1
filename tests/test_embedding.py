"""Similarities, distances, triplet/ranking/embedding and contrastive losses
against float64 NumPy references, optax, and the edges."""

import functools
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import logsumexp as np_logsumexp

import jaxloss
from helpers import check_hyperparameter, check_traced_out_of_range, jit_fast
from helpers import count_equations, temporaries
from test_regression import check_autodiff_modes

_jit = jit_fast

rng = np.random.default_rng(1)
N, D = 5, 4
A = rng.normal(0, 1, (N, D))
B = rng.normal(0, 1, (N, D))
C = rng.normal(0, 1, (N, D))
S1, S2 = rng.normal(0, 1, (2, N))
SIGN = rng.choice([-1.0, 1.0], N)
DIST = rng.uniform(0, 2, N)
LABELS = np.array([0, 0, 1, 1, 2, 0])
EMB = rng.normal(0, 1, (6, 3))
SP = rng.uniform(-0.5, 1.0, (N, 2))
SN = rng.uniform(-1.0, 0.8, (N, 4))


def ref_cosine(a, b, eps=0.0):
  na = np.sqrt(np.maximum(np.sum(a * a, -1), eps))
  nb = np.sqrt(np.maximum(np.sum(b * b, -1), eps))
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.sum(a * b, -1) / (na * nb)
  return np.where((na == 0) | (nb == 0), 0.0, out)


def ref_pnorm(v, p):
  return np.sum(np.abs(v)**p, -1)**(1 / p)


def ref_triplet(a, p, n, q=2, margin=1.0, eps=1e-6, swap=False,
                torch=False):
  def d(u, v):
    return ref_pnorm(u - v + eps, q) if torch else (
        np.sum(np.abs(u - v)**q, -1) + eps)**(1 / q)
  dn = d(a, n)
  if swap:
    dn = np.minimum(dn, d(p, n))
  return np.maximum(d(a, p) - dn + margin, 0)


def ref_cosine_embedding(x1, x2, y, margin):
  cos = np.sum(x1 * x2, -1) / np.sqrt(
      (np.sum(x1 * x1, -1) + 1e-12) * (np.sum(x2 * x2, -1) + 1e-12))
  return np.where(y == 1, 1 - cos, 0) + np.where(
      y == -1, np.maximum(cos - margin, 0), 0)


def ref_ntxent(z, labels, tau):
  u = z / np.linalg.norm(z, axis=1, keepdims=True)
  s = u @ u.T / tau
  losses = []
  for i in range(len(labels)):
    negatives = [s[i, k] for k in range(len(labels)) if labels[k] != labels[i]]
    for j in range(len(labels)):
      if j != i and labels[j] == labels[i]:
        denominator = np.exp(s[i, j]) + np.sum(np.exp(negatives))
        losses.append(-np.log(np.exp(s[i, j]) / denominator))
  return np.mean(losses) if losses else 0.0


def ref_circle(sp, sn, margin, gamma):
  """The paper's Eq. 4 as written, with plain exponentials (small gamma)."""
  out = []
  for p, n in zip(sp, sn):
    ap = np.maximum(1 + margin - p, 0)
    an = np.maximum(n + margin, 0)
    total = np.sum(np.exp(gamma * an * (n - margin))) * np.sum(
        np.exp(-gamma * ap * (p - 1 + margin)))
    out.append(np.log(1 + total))
  return np.array(out)


def _with_reduction(fn):
  """For functions without ``reduction``: the same sum and mean by hand."""
  def call(*args, reduction="none"):
    out = fn(*args)
    mean = jnp.sum(out) / max(out.size, 1)
    return {"none": out, "sum": jnp.sum(out), "mean": mean}[reduction]
  return call


# name -> (call(*float_inputs, *constant_inputs, reduction=...), reference,
#          float inputs, constant inputs)
CASES = {
    "cosine_similarity": (jaxloss.cosine_similarity, ref_cosine, (A, B), ()),
    "cosine_distance": (
        lambda a, b, **k: jaxloss.cosine_distance(a, b, epsilon=0.5, **k),
        lambda a, b: 1 - ref_cosine(a, b, 0.5), (A, B), ()),
    "pairwise_distance": (
        _with_reduction(lambda a, b: jaxloss.pairwise_distance(a, b, p=3.0)),
        lambda a, b: ref_pnorm(a - b + 1e-6, 3.0), (A, B), ()),
    "triplet_margin_loss": (
        lambda a, p, n, **k: jaxloss.triplet_margin_loss(
            a, p, n, margin=2.0, swap=True, **k),
        lambda a, p, n: ref_triplet(a, p, n, margin=2.0, swap=True),
        (A, B, C), ()),
    "triplet_margin_loss_torch_p1": (
        lambda a, p, n, **k: jaxloss.triplet_margin_loss(
            a, p, n, norm_degree=1, margin=1.5, distance="torch", **k),
        lambda a, p, n: ref_triplet(a, p, n, q=1, margin=1.5, torch=True),
        (A, B, C), ()),
    "triplet_margin_with_distance_loss": (
        lambda a, p, n, **k: jaxloss.triplet_margin_with_distance_loss(
            a, p, n, margin=2.0, **k),
        lambda a, p, n: ref_triplet(a, p, n, margin=2.0, torch=True),
        (A, B, C), ()),
    "margin_ranking_loss": (
        lambda x1, x2, y, **k: jaxloss.margin_ranking_loss(
            x1, x2, y, margin=0.3, **k),
        lambda x1, x2, y: np.maximum(-y * (x1 - x2) + 0.3, 0),
        (S1, S2), (SIGN,)),
    "hinge_embedding_loss": (
        lambda x, y, **k: jaxloss.hinge_embedding_loss(x, y, margin=1.5, **k),
        lambda x, y: np.where(y == 1, x, np.maximum(1.5 - x, 0)),
        (DIST,), (SIGN,)),
    "cosine_embedding_loss": (
        lambda x1, x2, y, **k: jaxloss.cosine_embedding_loss(
            x1, x2, y, margin=-0.2, **k),
        lambda x1, x2, y: ref_cosine_embedding(x1, x2, y, -0.2),
        (A, B), (SIGN,)),
    "ntxent": (
        _with_reduction(lambda z, y: jaxloss.ntxent(z, y, 0.5)),
        lambda z, y: ref_ntxent(z, y, 0.5), (EMB,), (LABELS,)),
    "circle_loss": (
        lambda sp, sn, **k: jaxloss.circle_loss(sp, sn, margin=0.25,
                                                gamma=4.0, **k),
        lambda sp, sn: ref_circle(sp, sn, 0.25, 4.0), (SP, SN), ()),
}
NAMES = sorted(CASES)


def _inputs(dtype, names=NAMES):
  out = {}
  for name in names:
    _, _, floats, consts = CASES[name]
    out[name] = (tuple(jnp.asarray(x, dtype) for x in floats),
                 tuple(jnp.asarray(x) for x in consts))
  return out


def _run(inputs, reductions=("none", "sum", "mean")):
  return {name: tuple(CASES[name][0](*f, *c, reduction=r)
                      for r in reductions)
          for name, (f, c) in inputs.items()}


def _weighted_total(floats, consts):
  weights = np.random.default_rng(2).uniform(0.5, 1.5, len(floats))
  return sum(w * CASES[name][0](*floats[name], *consts[name],
                                reduction="sum")
             for w, name in zip(weights, sorted(floats)))


def test_matches_float64_reference_and_reductions():
  with jax.enable_x64(True):
    got = _jit(_run)(_inputs(jnp.float64))
  for name in NAMES:
    _, ref, floats, consts = CASES[name]
    none, total, mean = (np.asarray(x) for x in got[name])
    assert none.dtype == np.float64, name
    np.testing.assert_allclose(none, ref(*floats, *consts), rtol=1e-10,
                               atol=1e-12, err_msg=name)
    np.testing.assert_allclose(total, np.sum(none), rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(mean, np.mean(none), rtol=1e-12, err_msg=name)


def test_jit_matches_eager_and_vmap_matches_batched():
  inputs = _inputs(jnp.float32)
  # Per-row losses: mapping over rows gives the batched rows.
  per_row = [n for n in NAMES if n != "ntxent"]
  jitted, mapped = _jit(lambda x: (_run(x, ("none",)), jax.vmap(lambda x: {
      n: CASES[n][0](*x[n][0], *x[n][1]) for n in per_row})(
          {n: x[n] for n in per_row})))(inputs)
  eager_names = ("triplet_margin_loss",)   # op by op is slow to warm up
  with jax.disable_jit():
    eager = {n: CASES[n][0](*inputs[n][0], *inputs[n][1])
             for n in eager_names}
  for name in eager_names:
    np.testing.assert_allclose(jitted[name][0], eager[name], rtol=1e-6,
                               atol=1e-6, err_msg=name)
  for name in per_row:
    np.testing.assert_allclose(mapped[name], jitted[name][0], rtol=1e-6,
                               atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_every_autodiff_mode_matches_finite_differences():
  # The circle loss holds its pair weights constant in the gradient: its
  # modes agree with each other, not with differences of its value (it is
  # checked against its own analytic gradient below).
  with jax.enable_x64(True):
    inputs = _inputs(jnp.float64)
    check_autodiff_modes(
        lambda f: {n: CASES[n][0](*f[n], *inputs[n][1], reduction="sum")
                   for n in f},
        {n: f for n, (f, _) in inputs.items()}, exact=("circle_loss",))


def test_circle_loss_gradient_holds_pair_weights_constant():
  margin, gamma = 0.25, 4.0
  with jax.enable_x64(True):
    gp, gn = jax.grad(lambda sp, sn: jaxloss.circle_loss(
        sp, sn, margin=margin, gamma=gamma, reduction="sum"),
                      argnums=(0, 1))(jnp.asarray(SP), jnp.asarray(SN))
  ap = np.maximum(1 + margin - SP, 0)
  an = np.maximum(SN + margin, 0)
  lp = -gamma * ap * (SP - 1 + margin)
  ln = gamma * an * (SN - margin)
  z = np_logsumexp(lp, -1) + np_logsumexp(ln, -1)
  outer = 1 / (1 + np.exp(-z))
  softmax_p = np.exp(lp - np_logsumexp(lp, -1, keepdims=True))
  softmax_n = np.exp(ln - np_logsumexp(ln, -1, keepdims=True))
  np.testing.assert_allclose(gp, outer[:, None] * softmax_p * -gamma * ap,
                             rtol=1e-10)
  np.testing.assert_allclose(gn, outer[:, None] * softmax_n * gamma * an,
                             rtol=1e-10)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_gives_float32_statistics(dtype):
  inputs = _inputs(dtype)
  got = _jit(lambda x: _run(x, ("none",)))(inputs)
  for name in NAMES:
    assert all(x.dtype == jnp.float32 for x in got[name]), name
    _, ref, _, consts = CASES[name]
    rounded = [np.asarray(x, np.float64) for x in inputs[name][0]]
    np.testing.assert_allclose(got[name][0], ref(*rounded, *consts),
                               rtol=3e-5, atol=3e-5, err_msg=name)


def test_finite_gradients_at_extreme_inputs_and_zero_vectors():
  inputs = {}
  for name in NAMES:
    _, _, floats, consts = CASES[name]
    scale = 1.0 if name == "circle_loss" else 1e4   # scores are cosines
    extreme = [np.where(x > 0, scale, -scale) for x in floats]
    # Rows of huge entries, rows of zeros, and rows at zero distance (every
    # input equal to the first), in one batch.
    rows = [np.concatenate([x, np.zeros_like(x),
                            extreme[0] if extreme[0].shape == x.shape else x])
            for x in extreme]
    consts = [np.concatenate([c] * 3) for c in consts]
    inputs[name] = (tuple(jnp.asarray(x, jnp.float32) for x in rows),
                    tuple(jnp.asarray(c) for c in consts))

  def total(floats):
    return sum(CASES[name][0](*floats[name], *inputs[name][1],
                              reduction="sum") for name in floats)

  floats = {k: f for k, (f, _) in inputs.items()}
  value, grads = _jit(jax.value_and_grad(total))(floats)
  assert np.isfinite(value)
  for name, g in grads.items():
    for x in g:
      assert np.all(np.isfinite(x)), name


# ---------------------------------------------------------------------------
# optax: same calls, same numbers; and where jaxloss deliberately differs.


def test_optax_signatures_are_kept():
  for name in ("cosine_similarity", "cosine_distance", "triplet_margin_loss",
               "ntxent"):
    ours = inspect.signature(getattr(jaxloss, name)).parameters
    theirs = inspect.signature(getattr(optax.losses, name)).parameters
    assert list(ours)[:len(theirs)] == list(theirs), name
    for arg, param in theirs.items():
      assert ours[arg].kind == param.kind, (name, arg)
      assert ours[arg].default == param.default, (name, arg)


def test_optax_parity():
  a, b, c = (jnp.asarray(x, jnp.float32) for x in (A, B, C))
  where = jnp.asarray(rng.uniform(size=A.shape) < 0.7)
  z, y = jnp.asarray(EMB, jnp.float32), jnp.asarray(LABELS)
  a3 = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  b3 = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  calls = {
      "cosine_similarity": lambda m, a: m.cosine_similarity(a, b),
      "cosine_similarity_eps_where": lambda m, a: m.cosine_similarity(
          a, b, epsilon=0.3, where=where),
      "cosine_similarity_axes": lambda m, a: m.cosine_similarity(
          a3, b3 + a[0, 0], axis=(0, 2)),
      "cosine_distance": lambda m, a: m.cosine_distance(a, b, axis=-1),
      "cosine_distance_all": lambda m, a: m.cosine_distance(a, b, axis=None),
      "triplet": lambda m, a: m.triplet_margin_loss(a, b, c),
      "triplet_positional": lambda m, a: m.triplet_margin_loss(
          a, b, c, -1, 2, 3.0, 1e-3),
      "triplet_p4": lambda m, a: m.triplet_margin_loss(
          a, b, c, norm_degree=4, margin=2.0),
      "ntxent": lambda m, a: m.ntxent(a, y[:N]),
      "ntxent_t": lambda m, a: m.ntxent(z + a[0, 0], y, 0.3),
  }

  with_grads = ("cosine_similarity", "cosine_distance_all", "triplet",
                "ntxent_t")

  @_jit
  def values_and_grads(a):
    return {name: [jax.value_and_grad(lambda a, m=m: jnp.sum(call(m, a)))(a)
                   if name in with_grads else (call(m, a), 0)
                   for m in (jaxloss, optax.losses)]
            for name, call in calls.items()}

  for name, (ours, theirs) in values_and_grads(a).items():
    np.testing.assert_allclose(ours[0], theirs[0], rtol=2e-5, atol=2e-6,
                               err_msg=name)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=2e-4, atol=2e-6,
                               err_msg=name)
  for name, call in calls.items():
    ours = jax.eval_shape(lambda a, call=call: call(jaxloss, a), a)
    theirs = jax.eval_shape(lambda a, call=call: call(optax.losses, a), a)
    assert ours.shape == theirs.shape, name


def test_cosine_of_zero_vectors_is_zero_with_zero_gradient_not_nan():
  zero = jnp.zeros(3)
  b = jnp.array([1.0, 2.0, 3.0])

  @_jit
  def run(a, b):
    return [jax.value_and_grad(fn, argnums=(0, 1))(a, b) for fn in (
        optax.losses.cosine_similarity, jaxloss.cosine_similarity,
        jaxloss.cosine_distance)]

  (theirs, theirs_grad), (ours, ours_grad), (dist, dist_grad) = run(zero, b)
  assert np.isnan(theirs) and np.all(np.isnan(theirs_grad[0]))
  assert ours == 0 and dist == 1
  for g in (*ours_grad, *dist_grad):
    np.testing.assert_array_equal(g, 0)
  # Every order: the second derivatives at a zero vector are 0 as well.
  hessian = jax.hessian(jaxloss.cosine_similarity, argnums=(0, 1))(zero, b)
  for h in jax.tree.leaves(hessian):
    np.testing.assert_array_equal(h, 0)
  # A row masked out entirely by where is a zero vector too.
  where = jnp.array([[False, False, False], [True, True, False]])
  got = jaxloss.cosine_similarity(jnp.stack([b, b]), jnp.stack([b, -b]),
                                  where=where)
  np.testing.assert_allclose(got, [0.0, -1.0], rtol=1e-6)


def test_pairwise_distance_gradient_at_zero_distance():
  x = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
  norms = (0.5, 1.0, 2.0, 3.0, float("inf"))
  grads = _jit(lambda x: [jax.grad(lambda u, p=p: jaxloss.pairwise_distance(
      u, x, p=p, eps=0.0).sum())(x) for p in norms])(x)
  for p, g in zip(norms, grads):
    np.testing.assert_array_equal(g, 0, err_msg=str(p))
  # The Euclidean distance's second derivatives there are 0 as well.
  hessian = jax.hessian(
      lambda u: jaxloss.pairwise_distance(u, x, eps=0.0).sum())(x)
  np.testing.assert_array_equal(hessian, 0)
  np.testing.assert_allclose(jaxloss.pairwise_distance(
      jnp.zeros((1, 2)), jnp.array([[3.0, -4.0]]), p=float("inf"), eps=0.0),
                             [4.0])
  np.testing.assert_allclose(jaxloss.pairwise_distance(
      jnp.zeros((2, 3, 2)), jnp.ones((2, 3, 2)), keepdim=True,
      eps=0.0).shape, (2, 3, 1))


def test_triplet_odd_norm_degree_is_a_norm_where_optax_is_wrong():
  a = jnp.zeros((1, 2))
  p = jnp.array([[1.0, 0.0]])
  n = jnp.array([[-2.0, 0.0]])   # the differences are negative
  ours = jaxloss.triplet_margin_loss(a, n, p, norm_degree=3, eps=0.0)
  np.testing.assert_allclose(ours, [2.0 - 1.0 + 1.0])
  assert np.isnan(optax.losses.triplet_margin_loss(a, n, p, norm_degree=3,
                                                   eps=0.0))
  ours = jaxloss.triplet_margin_loss(a, n, p, norm_degree=1, eps=0.0)
  np.testing.assert_allclose(ours, [2.0])
  theirs = optax.losses.triplet_margin_loss(a, n, p, norm_degree=1, eps=0.0)
  assert theirs == 4   # optax: d(a, n) = -1, a "negative distance"


def test_triplet_gradients_are_finite_at_zero_distance_even_without_eps():
  a = jnp.ones((2, 3))
  grads = _jit(lambda a: [jax.grad(
      lambda a, q=q, d=d: jaxloss.triplet_margin_loss(
          a, a, a + 1, norm_degree=q, eps=0.0, distance=d).sum())(a)
                             for d in ("optax", "torch") for q in (1, 2, 3)])(a)
  for g in grads:
    assert np.all(np.isfinite(g))


def test_triplet_margin_with_distance_swap_and_custom_distance():
  a, p, n = (jnp.asarray(x, jnp.float32) for x in (A, B, C))
  with_swap = jaxloss.triplet_margin_with_distance_loss(a, p, n, swap=True)
  np.testing.assert_allclose(
      with_swap, ref_triplet(A, B, C, swap=True, torch=True), rtol=1e-5)
  cos = jaxloss.triplet_margin_with_distance_loss(
      a, p, n, distance_function=jaxloss.cosine_distance, margin=0.5,
      reduction="mean")
  expected = np.maximum((1 - ref_cosine(A, B)) - (1 - ref_cosine(A, C))
                        + 0.5, 0).mean()
  np.testing.assert_allclose(cos, expected, rtol=1e-5)


def test_the_callers_distance_function_traces_as_written():
  # jaxloss's own body runs jax.numpy inlined (jaxloss._jit.inlined); a
  # caller's function runs as the caller wrote it, its loops staged.
  seen = []

  def l1(x1, x2):
    seen.append(bool(jax.config.jax_disable_jit))
    return jax.lax.fori_loop(0, x1.shape[-1], lambda i, s: s + jnp.abs(
        x1[..., i] - x2[..., i]), jnp.zeros(x1.shape[:-1], x1.dtype))

  a, p, n = (jnp.asarray(x, jnp.float32) for x in (A, B, C))
  got = jaxloss.triplet_margin_with_distance_loss(a, p, n,
                                                  distance_function=l1)
  assert seen == [False, False]
  want = np.maximum(np.abs(A - B).sum(-1) - np.abs(A - C).sum(-1) + 1, 0)
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="XLA:CPU's buffers")
def test_ntxent_value_keeps_no_more_than_optax():
  # The negatives' statistics and the pairs' sum read the similarities in
  # their reductions: no [batch, batch] array besides them (compiled, not
  # run).
  z = jax.ShapeDtypeStruct((1024, 128), jnp.float32)
  labels = jax.ShapeDtypeStruct((1024,), jnp.int32)
  assert temporaries(jaxloss.ntxent, z, labels) <= temporaries(
      optax.losses.ntxent, z, labels)


def test_ntxent_jitted_with_many_short_rows_matches_float64():
  # Its similarities are one matmul of the unit vectors. The [N, N, D]
  # broadcast form (optax's) divided by the temperature compiles wrong on
  # XLA:CPU (jax 0.10) from about 256 rows of 16 features: jitted, optax's
  # value at these inputs is 13.58 against float64's 11.06.
  z = np.random.default_rng(5).normal(size=(512, 16))
  labels = np.random.default_rng(6).permutation(np.arange(512) // 2)
  unit = z / np.linalg.norm(z, axis=1, keepdims=True)
  sims = unit @ unit.T / 0.07
  same = labels[:, None] == labels[None, :]
  positive = same & ~np.eye(512, dtype=bool)
  negatives = np.where(same, -np.inf, sims)
  lse = np_logsumexp(negatives, axis=1, keepdims=True)
  pairs = np.logaddexp(sims, lse) - sims
  want = pairs[positive].mean()
  got = jax.jit(jaxloss.ntxent)(jnp.asarray(z, jnp.float32),
                                jnp.asarray(labels))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_ntxent_without_positive_pairs_or_negatives():
  z = jnp.asarray(EMB[:4], jnp.float32)
  distinct = jnp.arange(4)
  same = jnp.zeros(4, jnp.int32)   # positives only: every pair costs 0

  @_jit
  def run(z):
    return (optax.losses.ntxent(z, distinct),
            jax.value_and_grad(jaxloss.ntxent)(z, distinct),
            jax.value_and_grad(jaxloss.ntxent)(z, same))

  theirs, (value, grad), (value_same, grad_same) = run(z)
  assert np.isnan(theirs)
  assert value == 0 and np.all(grad == 0)
  assert value_same == 0 and np.all(grad_same == 0)
  # The value alone takes a form of its own: the same zeros.
  assert _jit(jaxloss.ntxent)(z, distinct) == 0
  assert _jit(jaxloss.ntxent)(z, same) == 0
  # A row without negatives in a batch with them: its pairs cost 0.
  labels = jnp.array([0, 0, 1, 2])
  alone = _jit(jaxloss.ntxent)(z, labels)
  np.testing.assert_allclose(alone, jax.value_and_grad(jaxloss.ntxent)(
      z, labels)[0], rtol=1e-6)


def test_circle_loss_is_stable_and_masks_pairs():
  sp = jnp.array([[1.0, -1.0], [0.9, 0.95]])
  sn = jnp.array([[1.0, -1.0, 0.2], [-0.9, -1.0, 0.1]])
  pw = jnp.array([[True, False], [False, False]])

  @_jit
  def run(sp, sn):
    def loss(sp, sn, **k):
      return jaxloss.circle_loss(sp, sn, margin=0.25, gamma=256.0, **k)
    return (loss(sp, sn), jax.grad(lambda *a: loss(*a).sum(),
                                   argnums=(0, 1))(sp, sn),
            loss(sp, sn, positive_where=pw),
            loss(sp[:1, :1], sn[:1]),
            loss(sp, sn, positive_where=pw, reduction="mean"),
            jax.grad(lambda sp: loss(sp, sn, positive_where=pw).sum())(sp))

  got, grads, masked, first_only, masked_mean, masked_grad = run(sp, sn)
  # Written with scipy's logsumexp; the plain form overflows at gamma=256.
  ap = np.maximum(1.25 - np.asarray(sp, np.float64), 0)
  an = np.maximum(np.asarray(sn, np.float64) + 0.25, 0)
  z = (np_logsumexp(-256 * ap * (np.asarray(sp, np.float64) - 0.75), -1)
       + np_logsumexp(256 * an * (np.asarray(sn, np.float64) - 0.25), -1))
  np.testing.assert_allclose(got, np.logaddexp(0, z), rtol=1e-6)
  assert all(np.all(np.isfinite(x)) for x in grads)
  # Masking a pair is dropping it; an anchor left without positives costs 0,
  # with zero gradient, and the mean runs over anchors with pairs.
  np.testing.assert_allclose(masked[0], first_only[0], rtol=1e-6)
  assert masked[1] == 0
  np.testing.assert_allclose(masked_mean, masked[0], rtol=1e-6)
  np.testing.assert_array_equal(masked_grad[1], 0)
  np.testing.assert_array_equal(masked_grad[0, 1], 0)


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="XLA:CPU's buffers")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_circle_loss_value_writes_no_logits_out(dtype):
  # Its log-sum-exps have no select on the scores: XLA:CPU fuses them with
  # their sums, where jax.nn.logsumexp's selects had both sides' logits
  # written out (4 MiB each here, in float32). XLA:CPU fuses them so from
  # 4096 rows. Compiled, not run.
  scores = jax.ShapeDtypeStruct((4096, 256), dtype)
  assert temporaries(lambda p, n: jaxloss.circle_loss(p, n).mean(),
                     scores, scores) < 2**20


def test_circle_loss_on_a_batch_equals_keras_circle():
  # keras.losses.circle(y_true, y_pred) written out from its source, on unit
  # embeddings, against the recipe in circle_loss's docstring.
  u = EMB / np.linalg.norm(EMB, axis=1, keepdims=True)
  labels = LABELS
  gamma, margin = 80.0, 0.4
  dist = np.maximum(1 - u @ u.T, 0)
  same = labels[:, None] == labels[None, :]
  pos = same & ~np.eye(len(labels), dtype=bool)
  neg = ~same
  pos_w = np.maximum((margin + dist) * pos, 0)
  neg_w = np.maximum((1 + margin - dist) * neg, 0)
  p_loss = np_logsumexp(np.where(pos, -gamma * pos_w * (margin - dist),
                                 -np.inf), axis=1)
  n_loss = np_logsumexp(np.where(neg, gamma * neg_w * (1 - margin - dist),
                                 -np.inf), axis=1)
  keras = np.logaddexp(0, p_loss + n_loss)
  with jax.enable_x64(True):
    s = jnp.asarray(u @ u.T)
    got = jaxloss.circle_loss(s, s, margin=margin, gamma=gamma,
                              positive_where=jnp.asarray(pos),
                              negative_where=jnp.asarray(neg))
  np.testing.assert_allclose(got, np.where(np.isfinite(keras), keras, 0),
                             rtol=1e-9)


def test_hinge_embedding_value_without_selects():
  # On CPUs the value is arithmetic (XLA:CPU fuses it with a caller's sum,
  # where the selects' terms were written out): the selects' numbers at
  # targets next to 1 and -1, infinite distances.
  x = np.array([0.0, 0.5, 1.0, 2.0, 1e30, np.inf, -np.inf], np.float32)
  t = np.array([1.0, -1.0, 0.0, 1 + 2.0 ** -23, 1 - 2.0 ** -24,
                -1 + 2.0 ** -24, -1 - 2.0 ** -23, 0.5, 3.0], np.float32)
  xs, ts = np.meshgrid(x, t)
  for margin in (1.5, 0.0, -2.0):
    with np.errstate(invalid="ignore"):
      expected = (np.where(ts != 1, np.maximum(margin - xs, 0), 0)
                  + np.where(ts != -1, xs, 0))
    got = jaxloss.hinge_embedding_loss(xs, ts, margin=margin)
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    finite = np.isfinite(xs)
    total = jax.jit(lambda a, b: jnp.sum(
        jaxloss.hinge_embedding_loss(a, b, margin=margin)))(
            xs[finite], ts[finite])
    np.testing.assert_allclose(total, np.sum(expected[finite]), rtol=1e-6)
  shape = jax.ShapeDtypeStruct((512, 256), jnp.float32)
  mean = lambda a, b: jnp.mean(jaxloss.hinge_embedding_loss(a, b))
  assert temporaries(mean, shape, shape) < 0.01 * shape.size * 4


def test_torch_conventions_for_targets():
  x = jnp.array([0.5, 0.5, 0.5])
  y = jnp.array([1.0, -1.0, 0.0])   # torch: 0 takes both hinge terms
  np.testing.assert_allclose(jaxloss.hinge_embedding_loss(x, y),
                             [0.5, 0.5, 1.0])
  x1 = jnp.array([[1.0, 0.0]] * 3)
  x2 = jnp.array([[0.6, 0.8]] * 3)
  np.testing.assert_allclose(jaxloss.cosine_embedding_loss(x1, x2, y),
                             [0.4, 0.6, 0.0], rtol=1e-6)
  g = jax.grad(lambda u: jaxloss.cosine_embedding_loss(
      u, x2, y).sum())(jnp.zeros((3, 2)))
  assert np.all(np.isfinite(g))


# ---------------------------------------------------------------------------
# The shape contract: the first argument's shape is the element shape.


def test_second_arguments_broadcast_to_the_first_but_never_enlarge_it():
  v3, col, m = jnp.zeros(3) + 1, jnp.zeros((3, 1)) + 1, jnp.ones((3, 4))
  cases = [
      ("cosine_similarity", "targets", "predictions", m, m[:, :, None],
       lambda a: jaxloss.cosine_similarity(m, a)),
      ("cosine_distance", "where", "predictions", m, m[None] > 0,
       lambda a: jaxloss.cosine_distance(m, m, where=a)),
      ("pairwise_distance", "x2", "x1", m[0], m,
       lambda a: jaxloss.pairwise_distance(m[0], a)),
      ("triplet_margin_loss", "positives", "anchors", m[:1], m,
       lambda a: jaxloss.triplet_margin_loss(m[:1], a, m[:1])),
      ("triplet_margin_loss", "negatives", "anchors", m, m[:, None],
       lambda a: jaxloss.triplet_margin_loss(m, m, a, distance="torch")),
      ("triplet_margin_with_distance_loss", "negative", "anchor", m,
       m[:, None], lambda a: jaxloss.triplet_margin_with_distance_loss(
           m, m, a)),
      ("margin_ranking_loss", "input2", "input1", v3, col,
       lambda a: jaxloss.margin_ranking_loss(v3, a, v3)),
      ("margin_ranking_loss", "target", "input1", v3, col,
       lambda a: jaxloss.margin_ranking_loss(v3, v3, a)),
      ("hinge_embedding_loss", "targets", "predictions", v3, col,
       lambda a: jaxloss.hinge_embedding_loss(v3, a)),
      ("hinge_embedding_loss", "targets", "predictions", col, v3,
       lambda a: jaxloss.hinge_embedding_loss(col, a)),
      ("cosine_embedding_loss", "input2", "input1", m, m[None],
       lambda a: jaxloss.cosine_embedding_loss(m, a, v3)),
      ("cosine_embedding_loss", "target", "the batch shape of input1", m[:, 0],
       col,
       lambda a: jaxloss.cosine_embedding_loss(m, m, a)),
      ("ntxent", "labels", "the batch shape of embeddings", m[:, 0], col,
       lambda a: jaxloss.ntxent(m, a)),
      ("circle_loss", "positive_where", "positive_scores", m,
       m[:, :, None] > 0,
       lambda a: jaxloss.circle_loss(m, m, positive_where=a)),
  ]
  for name, arg, ref, ref_value, bad, call in cases:
    target = ref if "shape" in ref else f"{ref} shape"
    with pytest.raises(ValueError, match=(
        rf"{name}: {arg} shape {re.escape(str(bad.shape))} does not "
        rf"broadcast to {re.escape(target)} "
        rf"{re.escape(str(ref_value.shape))}")):
      call(bad)
  with pytest.raises(ValueError, match=r"; input1 has shape \(3, 4\)"):
    jaxloss.cosine_embedding_loss(m, m, col)
  # What may broadcast does, with the numbers of the explicit broadcast.
  a, b, c = (jnp.asarray(x, jnp.float32) for x in (A, B, C))
  np.testing.assert_allclose(
      jaxloss.triplet_margin_loss(a, b[0], c[:1], distance="torch"),
      jaxloss.triplet_margin_loss(a, jnp.broadcast_to(b[0], a.shape),
                                  jnp.broadcast_to(c[:1], a.shape),
                                  distance="torch"), rtol=1e-6)
  np.testing.assert_allclose(
      jaxloss.cosine_embedding_loss(a, b[:1], jnp.array([-1.0])),
      jaxloss.cosine_embedding_loss(a, jnp.broadcast_to(b[:1], a.shape),
                                    -jnp.ones(N)), rtol=1e-6)


def test_zero_dimensional_and_unbatched_inputs_as_torch():
  x, y, z = jnp.array(1.0), jnp.array(2.0), jnp.array(0.0)
  # torch reads a 0-d input as one vector of one element.
  np.testing.assert_allclose(jaxloss.pairwise_distance(x, y + 1.0), 2.0,
                             rtol=1e-5)
  assert jaxloss.pairwise_distance(x, y, keepdim=True).shape == ()
  got = jaxloss.triplet_margin_loss(x, y, z, distance="torch")
  assert got.shape == ()
  np.testing.assert_allclose(got, 1.0 - 1e-6 - 1e-6 * 0, atol=1e-6)
  np.testing.assert_allclose(jaxloss.nn.TripletMarginLoss()(x, y, z), got)
  np.testing.assert_allclose(
      jaxloss.margin_ranking_loss(x, y, jnp.array(1.0), margin=0.5), 1.5)
  np.testing.assert_allclose(
      jaxloss.hinge_embedding_loss(x, jnp.array(-1.0), margin=1.5), 0.5)


# ---------------------------------------------------------------------------
# Hyperparameters: traced or concrete, under jit, vmap and grad.

INF = float("inf")
REAL = r"\(-inf, inf\)"
# (loss, keyword, positional inputs, other keywords, two valid nonzero
#  values, an invalid one, the interval the message names).
HYPERS = [
    ("cosine_similarity", "epsilon", (A, B), {}, (2.0, 6.0), -1.0,
     r"\[0, inf\)"),
    ("cosine_distance", "epsilon", (A, B), {}, (2.0, 6.0), -1.0,
     r"\[0, inf\)"),
    ("pairwise_distance", "p", (A, B), {}, (1.5, 3.0), 0.0, r"\(0, inf\]"),
    ("pairwise_distance", "eps", (A, B), {}, (0.1, 0.3), INF, REAL),
    ("triplet_margin_loss", "norm_degree", (A, B, C), {}, (1.5, 3.0), -1.0,
     r"\(0, inf\]"),
    ("triplet_margin_loss", "margin", (A, B, C), {}, (0.5, 2.0), INF, REAL),
    ("triplet_margin_loss", "eps", (A, B, C), {"distance": "torch"},
     (1e-3, 0.1), INF, REAL),
    ("triplet_margin_with_distance_loss", "margin", (A, B, C), {},
     (0.5, 2.0), 0.0, r"\(0, inf\)"),
    ("margin_ranking_loss", "margin", (S1, S2, SIGN), {}, (0.3, -0.5), INF,
     REAL),
    ("hinge_embedding_loss", "margin", (DIST, SIGN), {}, (1.5, 0.5), INF,
     REAL),
    ("cosine_embedding_loss", "margin", (A, B, SIGN), {}, (-0.9, 0.3), INF,
     REAL),
    ("ntxent", "temperature", (EMB, LABELS), {}, (0.5, 0.1), 0.0,
     r"\(0, inf\)"),
    ("circle_loss", "margin", (SP, SN), {}, (0.25, 0.4), INF, REAL),
    ("circle_loss", "gamma", (SP, SN), {}, (4.0, 16.0), -1.0,
     r"\[0, inf\)"),
]


@pytest.mark.parametrize("name,keyword,args,options,values,bad,interval",
                         HYPERS, ids=[f"{h[0]}-{h[1]}" for h in HYPERS])
def test_hyperparameter_traced_equals_concrete_and_has_the_right_gradient(
    name, keyword, args, options, values, bad, interval):
  check_hyperparameter(name, keyword, args, options, values, bad, interval)


def test_traced_hyperparameters_out_of_range_fail_under_checked():
  check_traced_out_of_range(HYPERS)


def test_torch_distance_triplet_margin_is_positive_as_torch():
  a, b, c = (jnp.asarray(x, jnp.float32) for x in (A, B, C))
  for margin in (0.0, -1.0, np.float32(-0.5)):
    with pytest.raises(ValueError, match=(
        r"triplet_margin_loss: margin must be in \(0, inf\) with "
        r"distance='torch'")):
      jaxloss.triplet_margin_loss(a, b, c, margin=margin, distance="torch")
  with pytest.raises(jaxloss.CheckError, match=(
      r"triplet_margin_loss: margin must be positive with distance='torch'; "
      r"got -1")):
    jaxloss.checked(jaxloss.triplet_margin_loss)(
        a, b, c, margin=jnp.float32(-1.0), distance="torch")
  # optax's distance takes any margin, as optax does.
  np.testing.assert_allclose(
      jaxloss.triplet_margin_loss(a, b, c, margin=-1.0),
      optax.losses.triplet_margin_loss(a, b, c, margin=-1.0), rtol=1e-5,
      atol=1e-6)
  for cls in (jaxloss.nn.TripletMarginLoss,
              jaxloss.nn.TripletMarginWithDistanceLoss):
    for margin in (0.0, -1.0):
      with pytest.raises(ValueError, match=(
          rf"{cls.__name__}: margin must be in \(0, inf\), got {margin}")):
        cls(margin=margin)
  with pytest.raises(ValueError, match=(
      r"TripletMarginLoss: p must be in \(0, inf\], got 0")):
    jaxloss.nn.TripletMarginLoss(p=0)
  for cls in (jaxloss.nn.MarginRankingLoss, jaxloss.nn.HingeEmbeddingLoss,
              jaxloss.nn.CosineEmbeddingLoss):
    with pytest.raises(ValueError, match=(
        rf"{cls.__name__}: margin must be in {REAL}, got nan")):
      cls(margin=float("nan"))


def test_norm_degree_traced_up_to_inf_with_finite_gradients():
  a, b = jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)
  b = b.at[0].set(a[0])                   # a zero distance
  degrees = jnp.array([0.5, 1.0, 2.0, 3.0, jnp.inf])
  got = jax.vmap(lambda p: jaxloss.pairwise_distance(a, b, p=p, eps=0.0))(
      degrees)
  diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  for p, row in zip([0.5, 1.0, 2.0, 3.0], got):
    np.testing.assert_allclose(row, np.sum(diff**p, -1)**(1 / p), rtol=1e-5)
  np.testing.assert_allclose(got[-1], diff.max(-1), rtol=1e-6)
  grads = jax.vmap(jax.grad(lambda p: jaxloss.triplet_margin_loss(
      a, b, jnp.zeros_like(a), norm_degree=p, eps=0.0).sum()))(degrees)
  assert np.all(np.isfinite(grads)) and grads[-1] == 0
  for d in ("optax", "torch"):
    g = jax.grad(lambda x, d=d: jaxloss.triplet_margin_loss(
        x, b, b, norm_degree=jnp.inf, eps=0.0, distance=d).sum())(a)
    assert np.all(np.isfinite(g))


# ---------------------------------------------------------------------------
# Empty batches.


def test_empty_batch_gives_zero_with_zero_gradient():
  inputs = {name: (tuple(jnp.zeros((0, *np.shape(x)[1:])) for x in floats),
                   tuple(jnp.zeros((0,), jnp.asarray(c).dtype)
                         for c in consts))
            for name, (_, _, floats, consts) in CASES.items()}

  @_jit
  def run(inputs):
    out = _run(inputs)
    grads = jax.grad(lambda f: sum(
        CASES[n][0](*f[n], *inputs[n][1], reduction="mean") for n in f))(
            {n: f for n, (f, _) in inputs.items()})
    return out, grads

  out, grads = run(inputs)
  for name in CASES:
    none, total, mean = out[name]
    assert total == 0 and mean == 0 and not np.isnan(mean), name
    if name != "ntxent":
      assert none.shape == (0,), name
    for g, x in zip(grads[name], inputs[name][0]):
      assert g.shape == x.shape, name


# ---------------------------------------------------------------------------
# Errors.


def test_errors_name_the_function_and_argument():
  x = jnp.zeros((2, 3))
  with pytest.raises(TypeError, match="cosine_similarity: predictions must "
                     "have a floating dtype, got int32"):
    jaxloss.cosine_similarity(jnp.zeros((2, 3), jnp.int32), x)
  with pytest.raises(ValueError, match=r"cosine_distance: targets shape "
                     r"\(2, 4\) does not broadcast to predictions shape "
                     r"\(2, 3\)"):
    jaxloss.cosine_distance(x, jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="cosine_similarity: axis 2 is out of "
                     "bounds for predictions of rank 2"):
    jaxloss.cosine_similarity(x, x, axis=2)
  with pytest.raises(TypeError, match="cosine_similarity: where must be a "
                     "boolean mask"):
    jaxloss.cosine_similarity(x, x, where=jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"pairwise_distance: p must be in "
                     r"\(0, inf\]"):
    jaxloss.pairwise_distance(x, x, p=0.0)
  with pytest.raises(ValueError, match="triplet_margin_loss: distance must "
                     "be 'optax' or 'torch', got 'l2'"):
    jaxloss.triplet_margin_loss(x, x, x, distance="l2")
  with pytest.raises(ValueError, match=r"triplet_margin_loss: norm_degree "
                     r"must be in \(0, inf\], got -1"):
    jaxloss.triplet_margin_loss(x, x, x, norm_degree=-1)
  with pytest.raises(ValueError, match=r"triplet_margin_with_distance_loss: "
                     r"margin must be in \(0, inf\), got 0.0"):
    jaxloss.triplet_margin_with_distance_loss(x, x, x, margin=0.0)
  with pytest.raises(ValueError, match=r"triplet_margin_loss: margin must be "
                     r"in \(0, inf\) with distance='torch', as torch "
                     r"requires, got 0"):
    jaxloss.triplet_margin_loss(x, x, x, margin=0, distance="torch")
  with pytest.raises(TypeError, match="triplet_margin_with_distance_loss: "
                     "distance_function must be callable"):
    jaxloss.triplet_margin_with_distance_loss(x, x, x, distance_function=3)
  with pytest.raises(ValueError, match=r"margin_ranking_loss: target shape "
                     r"\(2,\) does not broadcast to input1 shape \(2, 3\)"):
    jaxloss.margin_ranking_loss(x, x, jnp.ones(2))
  with pytest.raises(ValueError, match=r"cosine_embedding_loss: target shape "
                     r"\(3,\) does not broadcast to the batch shape of input1 "
                     r"\(2,\)"):
    jaxloss.cosine_embedding_loss(x, x, jnp.ones(3))
  with pytest.raises(ValueError, match=r"ntxent: labels shape \(3,\) does "
                     r"not broadcast to the batch shape of embeddings \(2,\)"):
    jaxloss.ntxent(x, jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match=r"ntxent: embeddings must have shape "
                     r"\[batch, dim\]"):
    jaxloss.ntxent(x[0], jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match=r"circle_loss: positive_scores shape "
                     r"\(2, 3\) and negative_scores shape \(3, 3\) must share "
                     r"their batch shape"):
    jaxloss.circle_loss(x, jnp.zeros((3, 3)))
  with pytest.raises(TypeError, match="circle_loss: negative_where must be a "
                     "boolean mask"):
    jaxloss.circle_loss(x, x, negative_where=x)


def test_hinge_slope_at_the_tie_is_torchs():
  # torch's clamp_min passes the whole gradient at x = 0 (jnp.maximum would
  # split it, 1/2 each side); forward and reverse mode agree. Reference
  # numbers from torch 2.x.
  a, b = jnp.array([1.0, 0.5]), jnp.array([1.0, 0.2])
  y = jnp.array([1.0, -1.0])
  f = lambda a: jaxloss.margin_ranking_loss(a, b, y, margin=0.0)
  np.testing.assert_array_equal(jax.grad(lambda a: f(a).sum())(a), [-1, 1])
  np.testing.assert_array_equal(jax.jacfwd(f)(a).diagonal(), [-1, 1])
  # d/dmargin too: 1 at the tie.
  np.testing.assert_array_equal(jax.grad(
      lambda m: jaxloss.margin_ranking_loss(a, b, y, margin=m).sum())(0.0), 2)
  x = jnp.array([1.0, 0.3])
  np.testing.assert_array_equal(jax.grad(lambda x: jaxloss.hinge_embedding_loss(
      x, jnp.array([-1.0, -1.0])).sum())(x), [-1, -1])
  u = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  v = jnp.array([[1.0, 1.0], [1.0, 0.0]])
  g = jax.grad(lambda u: jaxloss.cosine_embedding_loss(
      u, v, jnp.array([-1, -1]), margin=0.0).sum())(u)
  np.testing.assert_allclose(g, [[0, 0.70710677], [1e6, 0]], atol=1e-6,
                             rtol=1e-6)
  # NaN stays NaN, with torch's slope 0.
  nan = jnp.array([jnp.nan])
  assert np.isnan(jaxloss.margin_ranking_loss(nan, jnp.zeros(1),
                                              jnp.ones(1)))[0]
  np.testing.assert_array_equal(jax.grad(lambda a: jaxloss.margin_ranking_loss(
      a, jnp.zeros(1), jnp.ones(1)).sum())(nan), [0])


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="XLA:CPU's fusion of the sums")
def test_cosine_value_sums_the_dot_product_with_the_mean():
  # Each vector's scale from its norm first, then one sum of a * b * scales,
  # which XLA merges with the mean over the rows: two row sums (the norms)
  # and one sum of everything, not a third row sum for the dot product.
  a = jax.ShapeDtypeStruct((64, 32), jnp.float32)
  text = jax.jit(lambda a, b: jnp.mean(jaxloss.cosine_similarity(a, b))).lower(
      a, a).compile().as_text()
  sums = re.findall(r"= (f32\[[0-9,]*\])\S* reduce\(", text)
  assert sorted(sums) == ["f32[64]", "f32[64]", "f32[]"], sums


def test_norm_and_cosine_gradients_take_no_select():
  # A select on the rows' norms (the zero vector's guard) joins the
  # gradient's [..., C] pass, which XLA:CPU then compiles as a loop of its
  # own instead of handing it to the library that fuses the rest.
  a = jnp.ones((4, 8))
  for fn in (jaxloss.cosine_similarity, jaxloss.cosine_distance,
             jaxloss.pairwise_distance):
    jaxpr = jax.make_jaxpr(jax.grad(
        lambda a, b, fn=fn: jnp.mean(fn(a, b)), argnums=(0, 1)))(a, a)
    assert count_equations(jaxpr.jaxpr, "select_n") == 0, fn.__name__


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="XLA:CPU's fusion of the conversions")
@pytest.mark.parametrize("fn,extra", [
    (jaxloss.cosine_similarity, ()), (jaxloss.cosine_distance, ()),
    (jaxloss.cosine_embedding_loss, (jnp.ones(512),))])
def test_half_precision_cosine_gradients_keep_no_float32_copy(fn, extra):
  # The row sums' derivatives read bfloat16 input converted apart from the
  # sums' conversions: sharing them, XLA:CPU wrote a float32 copy of both
  # inputs out for the sums and the gradient's pass.
  spec = jax.ShapeDtypeStruct((512, 256), jnp.bfloat16)
  for argnums in (0, (0, 1)):
    step = jax.value_and_grad(lambda a, b: jnp.mean(fn(a, b, *extra)),
                              argnums=argnums)
    assert temporaries(step, spec, spec) < 0.1 * 512 * 256 * 4
  rng = np.random.default_rng(3)
  a, b = (jnp.asarray(rng.normal(size=(512, 256)), jnp.bfloat16)
          for _ in range(2))
  grad = jax.grad(lambda a, b: jnp.sum(fn(a, b, *extra)), argnums=(0, 1))
  for got, want in zip(grad(a, b), grad(a.astype(jnp.float32),
                                        b.astype(jnp.float32))):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=1e-2,
                               atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="XLA:CPU's fusion of the differences")
@pytest.mark.parametrize("fn,own", [
    (jaxloss.triplet_margin_loss, True),
    (functools.partial(jaxloss.triplet_margin_loss, distance="torch",
                       swap=True), True),
    (jaxloss.triplet_margin_with_distance_loss, False),
    (lambda a, p, n: jaxloss.pairwise_distance(a, p)
     + jaxloss.pairwise_distance(a, n, keepdim=True)[..., 0], False)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_euclidean_distance_gradients_keep_no_difference(fn, own, dtype):
  # The squared differences' derivatives read the inputs again behind
  # barriers: sharing the differences (or, in half precision, the float32
  # conversions and the shift's broadcast) with the sums, XLA:CPU wrote
  # them out.
  spec = jax.ShapeDtypeStruct((512, 256), dtype)
  step = jax.value_and_grad(lambda a, p, n: jnp.mean(fn(a, p, n)),
                            argnums=(0, 1, 2))
  assert temporaries(step, spec, spec, spec) < 0.1 * 512 * 256 * 4
  rng = np.random.default_rng(4)
  a, p, n = (jnp.asarray(rng.normal(size=(64, 256)), dtype) for _ in range(3))
  total = lambda *x: jnp.sum(fn(*x))
  grads = jax.grad(total, argnums=(0, 1, 2))
  # A loss's own distances take one derivative rule, whose cotangents of
  # the anchor add up in float32 before the one conversion to bfloat16;
  # two calls of pairwise_distance add theirs in the input's dtype (jax's).
  rtol = 1e-6 if dtype == jnp.float32 else 1e-2
  atol = 1e-6 if dtype == jnp.float32 or own else 2e-3
  for got, want in zip(grads(a, p, n),
                       grads(*(x.astype(jnp.float32) for x in (a, p, n)))):
    assert got.dtype == dtype
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=rtol,
                               atol=atol)
