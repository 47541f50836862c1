"""The custom-VJP cross entropy on probability labels against the reference.

``softmax_cross_entropy(implementation="xla")`` (the default) keeps per-row
statistics only; ``"reference"`` is plain autodiff of the formula. Both must
give the same values and the same gradients by the logits, the labels and
the class weights, with every option.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
import reference as ref
from helpers import condition_shapes

CE = jaxloss.softmax_cross_entropy
rng = np.random.default_rng(11)
N, C = 6, 37
X = rng.normal(0, 3, (N, C))
Y = rng.dirichlet(np.full(C, 0.3), N)
Y[0, :5] = 0.0                       # zero labels on finite logits
W = rng.uniform(0.5, 2, (C,))
W[3] = 0.0                           # a class weighted out
ROWS = np.array([True, False, True, True, True, True])
CLASSES = rng.uniform(size=(N, C)) > 0.3
CLASSES[2] = False                   # a kept row with no class left
# -inf logits where the labels give no mass: outside the support.
INF_X = X.copy()
INF_X[1, [2, 7]] = -np.inf
INF_X[4, 0] = -np.inf
INF_Y = Y.copy()
INF_Y[1, [2, 7]] = 0.0
INF_Y[4, 0] = 0.0
INF_Y /= INF_Y.sum(-1, keepdims=True)

OPTIONS = {
    "plain": {},
    "weight": dict(weight=W),
    "smoothing": dict(label_smoothing=0.3),
    "rows": dict(where=ROWS, weight=W, label_smoothing=0.2),
    "classes": dict(where=CLASSES, weight=W, label_smoothing=0.2),
}


@functools.partial(jax.jit, static_argnames=("statics", "reduction"))
def both_paths(x, y, weight, where, statics, reduction):
  """Per implementation: loss and gradients by logits, labels and weights."""
  out = {}
  for implementation in ("xla", "reference"):
    def total(x, y, weight):
      loss = CE(x, y, weight=weight, where=where, reduction=reduction,
                implementation=implementation, **dict(statics))
      return jnp.sum(loss), loss
    argnums = (0, 1) if weight is None else (0, 1, 2)
    (_, loss), grads = jax.value_and_grad(total, argnums, has_aux=True)(
        x, y, weight)
    out[implementation] = (loss, grads)
  return out


def compare(x, y, options, reduction="none", rtol=2e-6, atol=1e-6):
  weight = options.get("weight")
  where = options.get("where")
  statics = tuple(sorted((k, v) for k, v in options.items()
                         if k not in ("weight", "where")))
  dtype = x.dtype
  out = both_paths(x, y, None if weight is None else jnp.asarray(weight, dtype),
                   None if where is None else jnp.asarray(where), statics,
                   reduction)
  got, want = out["xla"], out["reference"]
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype
    np.testing.assert_allclose(np.asarray(g, np.float64),
                               np.asarray(w, np.float64), rtol=rtol, atol=atol)
  return got


@pytest.mark.parametrize("name", list(OPTIONS))
def test_xla_matches_reference(name):
  options = OPTIONS[name]
  for x, y, reduction in ((X, Y, "none"), (INF_X, INF_Y, "mean")):
    compare(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), options,
            reduction)


def test_float64_matches_numpy_and_reference():
  with jax.enable_x64(True):
    x, y = jnp.asarray(INF_X), jnp.asarray(INF_Y)
    got = compare(x, y, dict(weight=W, label_smoothing=0.2), rtol=1e-12,
                  atol=1e-13)
  # No -inf and no mask: the numpy formula's uniform smoothing is the same.
  want = ref.softmax_cross_entropy(X, Y, weight=W, label_smoothing=0.2)
  with jax.enable_x64(True):
    loss = CE(jnp.asarray(X), jnp.asarray(Y), weight=W, label_smoothing=0.2)
  np.testing.assert_allclose(loss, want, rtol=1e-12)
  assert got[0].dtype == jnp.float64


@pytest.mark.parametrize("implementation", ["xla", "reference"])
def test_label_gradient_is_lse_minus_logit_also_at_zero_labels(
    implementation):
  # d loss / d y_j = w_j (lse - x_j): a zero label has a gradient too.
  with jax.enable_x64(True):
    x, y, w = jnp.asarray(INF_X), jnp.asarray(INF_Y), jnp.asarray(W)
    grad = np.asarray(jax.grad(lambda y: jnp.sum(CE(
        x, y, weight=w, implementation=implementation)))(y))
  lse = np.log(np.sum(np.exp(INF_X), -1, keepdims=True))
  want = np.where(np.isinf(INF_X), 0.0, W * (lse - INF_X))
  np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-13)
  assert np.all(grad[0, [0, 1, 2, 4]] != 0)   # W[3] is 0


def test_large_common_offset_keeps_float32_precision():
  # Every term of the statistics is non-negative: logits near 1e3 lose
  # nothing to cancellation.
  x = rng.normal(size=(4, 50)) + 1000.0
  y = rng.dirichlet(np.ones(50), 4)
  want = ref.softmax_cross_entropy(np.asarray(x, np.float32), y)
  got = CE(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_edges_are_exact():
  x = jnp.asarray(X, jnp.float32)
  y = jnp.asarray(Y, jnp.float32)
  # Dropped rows hold nan and inf: value and every gradient there are 0.
  x = x.at[1].set(jnp.nan).at[1, 0].set(jnp.inf)
  y = y.at[1].set(jnp.nan)
  # A row of -inf logits with no label mass costs 0, gradients 0.
  x = x.at[3].set(-jnp.inf)
  y = y.at[3].set(0.0)
  # Label mass on a -inf logit costs inf.
  x = x.at[5, 2].set(-jnp.inf)

  def total(x, y):
    loss = CE(x, y, where=jnp.asarray(ROWS))
    return jnp.sum(jnp.where(jnp.isfinite(loss), loss, 0)), loss

  (_, loss), (dx, dy) = jax.jit(jax.value_and_grad(total, (0, 1),
                                                   has_aux=True))(x, y)
  assert loss[1] == 0 and loss[3] == 0 and loss[5] == jnp.inf
  assert np.all(np.isfinite(np.asarray(loss)[[0, 2, 4]]))
  for g in (dx, dy):
    assert np.all(np.asarray(g)[[1, 3]] == 0)
    assert np.all(np.isfinite(np.asarray(g)[[0, 2, 4]]))
  # The value alone takes its own form of the sums on CPUs: the same
  # numbers, at every edge (every logit -inf, with label mass: inf).
  x = x.at[4].set(-jnp.inf)
  want = np.asarray(total(x, y)[1])
  got = np.asarray(jax.jit(lambda x, y: CE(x, y, where=jnp.asarray(ROWS)))(
      x, y))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert got[4] == np.inf and got[3] == 0
  x, y = jnp.asarray(INF_X, jnp.float32), jnp.asarray(INF_Y, jnp.float32)
  for weight in (None, jnp.asarray(W, jnp.float32)):
    def ce(x, weight=weight):
      return CE(x, y, weight=weight)
    value, _ = jax.vjp(ce, x)
    np.testing.assert_allclose(ce(x), value, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(value)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mass_on_a_row_of_minus_inf_logits(smoothing):
  # The loss is inf, and so is its derivative by the label that puts the
  # mass there, as the plain formula has it; the logits' gradient is
  # finite (the plain formula's is NaN on that row).
  x = jnp.asarray([[-jnp.inf] * 3, [1.0, -jnp.inf, 0.0]])
  y = jnp.asarray([[1.0, 0.0, 0.0], [0.5, 0.0, 0.5]])

  def total(x, y, implementation):
    return CE(x, y, label_smoothing=smoothing,
              implementation=implementation).sum()

  got = jax.jit(jax.grad(total, (0, 1)), static_argnums=2)(x, y, "xla")
  want = jax.grad(total, (0, 1))(x, y, "reference")
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
  assert got[1][0, 0] == np.inf
  np.testing.assert_allclose(got[0][1], want[0][1], rtol=1e-5)
  assert np.all(np.isfinite(np.asarray(got[0])))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_inputs(dtype):
  # float32 statistics; each gradient in its input's dtype.
  x = jnp.asarray(X, dtype)
  y = jnp.asarray(Y, dtype)
  got = compare(x, y, dict(weight=W, label_smoothing=0.1), "mean",
                rtol=1e-2, atol=1e-3)
  loss, (dx, dy, dw) = got
  assert loss.dtype == jnp.float32
  assert (dx.dtype, dy.dtype, dw.dtype) == (x.dtype, y.dtype, x.dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_no_class_sized_temporary(dtype):
  # A memory property: value and both gradients keep O(N) statistics; the
  # reference keeps [N, C] float32 arrays.
  rows, classes = 256, 4096
  x = jnp.zeros((rows, classes), dtype)
  w = jnp.ones((classes,), jnp.float32)

  def analysis(implementation):
    def f(x, y):
      return CE(x, y, weight=w, label_smoothing=0.1, reduction="mean",
                implementation=implementation)
    compiled = jax.jit(jax.value_and_grad(f, (0, 1))).lower(x, x).compile()
    return compiled.memory_analysis()
  fast, slow = analysis("xla"), analysis("reference")
  if fast is None:
    pytest.skip("this backend reports no memory analysis")
  assert fast.temp_size_in_bytes < rows * classes
  assert slow.temp_size_in_bytes >= rows * classes * 4


def test_broadcast_and_integer_labels():
  x = jnp.asarray(X, jnp.float32)
  y = jnp.asarray(Y[0], jnp.float32)   # one distribution for every row
  for implementation in ("xla", "reference"):
    g = jax.grad(lambda y: jnp.sum(CE(x, y, implementation=implementation)))
    assert g(y).shape == (C,)
  np.testing.assert_allclose(
      jax.grad(lambda y: jnp.sum(CE(x, y)))(y),
      jax.grad(lambda y: jnp.sum(CE(x, y, implementation="reference")))(y),
      rtol=2e-6, atol=1e-6)
  onehot = jnp.eye(C, dtype=jnp.int32)[jnp.arange(N)]
  np.testing.assert_allclose(
      CE(x, onehot), jaxloss.softmax_cross_entropy_with_integer_labels(
          x, jnp.arange(N)), rtol=1e-6)


def test_class_axis_vmap_and_checkpoint():
  x = jnp.asarray(X, jnp.float32)
  y = jnp.asarray(Y, jnp.float32)
  want = jax.grad(lambda x: jnp.sum(CE(x, y)))(x)
  moved = jax.grad(lambda x: jnp.sum(CE(x, y.T, axis=0)))(x.T)
  np.testing.assert_allclose(moved.T, want, rtol=1e-6, atol=1e-7)
  rowwise = jax.vmap(jax.grad(lambda x, y: CE(x, y)))(x, y)
  np.testing.assert_allclose(rowwise, want, rtol=1e-6, atol=1e-7)
  saved = jax.grad(jax.checkpoint(lambda x: jnp.sum(CE(x, y))))(x)
  np.testing.assert_allclose(saved, want, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_every_autodiff_mode_matches_the_reference():
  # One tangent rule for every mode; labels and weights differentiated too.
  x = jnp.asarray(INF_X[:3, :9], jnp.float32)
  y = jnp.asarray(INF_Y[:3, :9], jnp.float32)
  w = jnp.asarray(W[:9], jnp.float32)
  where = jnp.asarray([True, False, True])

  def f(implementation):
    return lambda x, y, w: CE(x, y, weight=w, where=where,
                              label_smoothing=0.2, reduction="mean",
                              implementation=implementation)
  fast, slow = f("xla"), f("reference")
  args = (jnp.where(jnp.isinf(x), -30.0, x), y, w)
  tangents = tuple(jnp.asarray(rng.normal(size=a.shape), jnp.float32)
                   for a in args)
  np.testing.assert_allclose(jax.jvp(fast, args, tangents)[1],
                             jax.jvp(slow, args, tangents)[1], rtol=2e-5)
  for mode in (jax.jacfwd, jax.jacrev, jax.hessian):
    for got, want in zip(jax.tree.leaves(mode(fast, (0, 1, 2))(*args)),
                         jax.tree.leaves(mode(slow, (0, 1, 2))(*args))):
      np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  x, y = jnp.asarray(X[2], jnp.float32), jnp.asarray(Y[2], jnp.float32)
  hessian = jax.hessian(lambda x: CE(x, y))(x)   # y sums to 1
  p = jax.nn.softmax(x)
  np.testing.assert_allclose(hessian, np.diag(p) - np.outer(p, p),
                             atol=1e-6)


@pytest.mark.parametrize("bad", ["pallas", "fast", None])
def test_bad_implementation(bad):
  with pytest.raises(ValueError, match=(
      "softmax_cross_entropy: implementation must be one of 'auto', 'xla', "
      f"'reference', got {bad!r}")):
    CE(jnp.zeros((2, 3)), jnp.zeros((2, 3)), implementation=bad)


def test_unless_nan_takes_the_exact_form_only_for_a_nan():
  from jaxloss._value_form import unless_nan

  def fast(a):
    return jnp.sqrt(a)

  def exact(a):
    return -jnp.ones_like(a)

  a = jnp.array([[1.0, 4.0], [9.0, 16.0]])
  np.testing.assert_array_equal(jax.jit(lambda a: unless_nan(fast, exact, a))(
      a), jnp.sqrt(a))
  np.testing.assert_array_equal(unless_nan(fast, exact, a.at[1, 0].set(-1)),
                                -np.ones((2, 2)))
  # Under vmap the condition is the whole batch's: one row's NaN sends every
  # row to the exact form (a batched cond would take both and select).
  batched = jax.jit(jax.vmap(lambda a: unless_nan(fast, exact, a)))
  np.testing.assert_array_equal(batched(a), jnp.sqrt(a))
  np.testing.assert_array_equal(batched(a.at[1, 0].set(-1)), -np.ones((2, 2)))
  jaxpr = str(jax.make_jaxpr(jax.vmap(lambda a: unless_nan(fast, exact, a)))(a))
  assert "select_n" not in jaxpr


def test_unless_nan_with_finite_takes_the_exact_form_where_not_finite():
  from jaxloss._value_form import unless_nan

  def fast(a, b):
    assert b is None
    return 1 / a

  def exact(a, b):
    assert b is None
    return jnp.zeros_like(a)

  def f(a):
    return unless_nan(fast, exact, a, None, finite=True)

  a = jnp.array([1.0, 2.0])
  np.testing.assert_array_equal(jax.jit(f)(a), 1 / a)
  np.testing.assert_array_equal(jax.jit(f)(a.at[0].set(0.0)), [0.0, 0.0])
  np.testing.assert_array_equal(jax.vmap(f)(jnp.stack([a, a.at[1].set(0)])),
                                np.zeros((2, 2)))
  # Without ``finite`` only a NaN takes the exact form.
  np.testing.assert_array_equal(
      unless_nan(fast, exact, a.at[0].set(0.0), None), [np.inf, 0.5])


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the value's plain form is XLA:CPU's")
@pytest.mark.parametrize("batched", [False, True], ids=["jit", "vmap"])
@pytest.mark.parametrize("options", ["plain", "smoothing and weights"])
def test_probability_value_takes_the_plain_sum_unless_it_is_nan(
    batched, options):
  # The guard against 0 * inf costs XLA:CPU's fused sum about as much as
  # the formula: the value runs the plain sum behind one scalar condition.
  # With label smoothing the plain sum is over every class, which is the
  # support wherever it is finite.
  x = jnp.asarray(rng.normal(0, 2, (4, N, C)), jnp.float32)
  y = jax.nn.softmax(jnp.asarray(rng.normal(0, 2, (4, N, C)), jnp.float32))
  kw = ({} if options == "plain" else
        dict(weight=jnp.asarray(W, jnp.float32), label_smoothing=0.3))

  def fn(x, y, implementation="auto"):
    return jaxloss.softmax_cross_entropy(x, y, implementation=implementation,
                                         **kw)
  run = jax.vmap(fn) if batched else fn
  hlo = jax.jit(run).lower(x, y).compile().as_text()
  assert hlo.count("conditional(") == 1
  np.testing.assert_allclose(jax.jit(run)(x, y), fn(x, y, "reference"),
                             rtol=1e-6)
  x = x.at[0, 1, 2].set(-jnp.inf).at[3, 0, 0].set(-jnp.inf)
  y = y.at[0, 1, 2].set(0.0).at[3, 0, 0].set(0.25)
  out = jax.jit(run)(x, y)
  assert out[3, 0] == jnp.inf
  expected = fn(x, y, "reference")
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  assert np.isfinite(out[0, 1])
  # A row of -inf logits without label mass costs 0; the others alike.
  x, y = x.at[2, 2].set(-jnp.inf), y.at[2, 2].set(0.0)
  np.testing.assert_allclose(jax.jit(run)(x, y), fn(x, y, "reference"),
                             rtol=1e-6)
  assert jax.jit(run)(x, y)[2, 2] == 0


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the value's plain form is XLA:CPU's")
@pytest.mark.parametrize("batched", [False, True], ids=["jit", "vmap"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("options", ["plain", "smoothing and weights"])
def test_reduced_value_is_one_sum_of_every_term(batched, reduction, options):
  # Reduced, the value's condition is on the total, not the rows: the last
  # pass sums every term at once (XLA folds it, as optax's mean of row
  # sums), and the rows are never written out. The fallbacks and the
  # derivatives are the rows' own.
  x = jnp.asarray(rng.normal(0, 2, (4, N, C)), jnp.float32)
  y = jax.nn.softmax(jnp.asarray(rng.normal(0, 2, (4, N, C)), jnp.float32))
  kw = ({} if options == "plain" else
        dict(weight=jnp.asarray(W, jnp.float32), label_smoothing=0.3))

  def fn(x, y, implementation="auto"):
    return CE(x, y, implementation=implementation, reduction=reduction, **kw)

  def rows(x, y):
    return getattr(CE(x, y, implementation="reference", **kw), reduction)()

  run, want = (jax.vmap(fn), jax.vmap(rows)) if batched else (fn, rows)
  hlo = jax.jit(run).lower(x, y).compile().as_text()
  assert condition_shapes(hlo) == ["f32[4]" if batched else "f32[]"]
  np.testing.assert_allclose(jax.jit(run)(x, y), want(x, y), rtol=1e-6)
  grads = jax.grad(lambda x, y: jnp.sum(run(x, y)), (0, 1))(x, y)
  wants = jax.grad(lambda x, y: jnp.sum(want(x, y)), (0, 1))(x, y)
  for g, w in zip(grads, wants):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  # Forward mode and a second order (Hessian times a vector) alike.
  v = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  hvps = [jax.jvp(jax.grad(lambda x, f=f: jnp.sum(f(x, y))), (x,), (v,))
          for f in (run, want)]
  for got, ref_ in zip(*hvps):
    np.testing.assert_allclose(got, ref_, rtol=1e-4, atol=1e-6)
  # A zero label on a -inf logit (the guarded form's), then mass there.
  x = x.at[0, 1, 2].set(-jnp.inf).at[2, 2].set(-jnp.inf)
  y = y.at[0, 1, 2].set(0.0).at[2, 2].set(0.0)
  out = jax.jit(run)(x, y)
  np.testing.assert_allclose(out, want(x, y), rtol=1e-6)
  assert np.all(np.isfinite(out))
  # Mass on the row of -inf logits costs inf.
  out = jax.jit(run)(x, y.at[2, 2, 0].set(0.5))
  if batched:
    assert out[2] == np.inf and np.all(np.isfinite(np.asarray(out)[[0, 1, 3]]))
  else:
    assert out == np.inf


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the value's plain form is XLA:CPU's")
def test_smoothed_value_takes_traced_and_batched_smoothing():
  # The smoothing is an ordinary argument of the fused value: traced,
  # vmapped, one compile for every value.
  x = jnp.asarray(X, jnp.float32)
  y = jnp.asarray(Y, jnp.float32)
  w = jnp.asarray(W, jnp.float32)

  def fn(s, implementation="auto"):
    return CE(x, y, weight=w, label_smoothing=s,
              implementation=implementation)
  f = jax.jit(fn)
  smoothing = jnp.asarray([0.05, 0.3, 1.0])
  np.testing.assert_allclose(
      jax.vmap(f)(smoothing),
      np.stack([fn(float(s), "reference") for s in smoothing]), rtol=1e-6)
  for s in smoothing:
    np.testing.assert_allclose(f(s), fn(float(s), "reference"), rtol=1e-6)
  assert f._cache_size() == 1
  # Linear in the smoothing: its derivative is smooth / C - cross.
  grad = jax.grad(lambda s: fn(s).sum())(0.3)
  want = jax.grad(lambda s: fn(s, "reference").sum())(0.3)
  np.testing.assert_allclose(grad, want, rtol=1e-5)


def test_the_total_refuses_a_row_mask_it_would_drop():
  # The total is one sum of every term: a row mask would be ignored there,
  # so it is an error, not a silently wrong number.
  from jaxloss.kernels import cross_entropy as kernels
  x = jnp.asarray(X, jnp.float32)
  y = jnp.asarray(Y, jnp.float32)
  with pytest.raises(ValueError, match="total takes no keep"):
    kernels.label_chain(x, y, jnp.asarray(ROWS), None, total=True)
  np.testing.assert_allclose(
      kernels.label_chain(x, y, None, None, total=True),
      np.sum(kernels.label_chain(x, y, None, None)), rtol=1e-6)
