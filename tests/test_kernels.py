"""The custom-VJP and Pallas cross entropy against the reference formulation.

Off GPUs the Pallas kernels run in interpret mode; on a GPU the same tests run
the compiled Triton kernels (``python benchmarks/gpu.py``).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxloss
import reference as ref
from helpers import FLOATS, MODES, dtype_context, run
from jaxloss import _multiclass
from jaxloss.kernels import cross_entropy as kernel_ce
from jaxloss.kernels import pallas_cross_entropy

CE = jaxloss.softmax_cross_entropy_with_integer_labels
GPU = jax.default_backend() == "gpu"
rng = np.random.default_rng(5)
N, C = 6, 37
X = rng.normal(0, 3, (N, C))
LABELS = rng.integers(0, C, (N,))
IGNORED = LABELS.copy()
IGNORED[[1, 4]] = -100
W = rng.uniform(0.5, 2, (C,))
ROWS = np.array([True, False, True, True, True, True])
CLASSES = rng.uniform(size=(N, C)) > 0.3
CLASSES[2] = False   # a row with no class left: dropped
CLASSES[3, LABELS[3]] = True

OPTIONS = {
    "plain": {},
    "ignore": dict(ignore_index=-100),
    "weight": dict(weight=W),
    "smoothing": dict(label_smoothing=0.3),
    "z": dict(z_loss=1e-2),
    "rows": dict(where=ROWS),
    "classes": dict(where=CLASSES),
    "all": dict(ignore_index=-100, weight=W, label_smoothing=0.2, z_loss=1e-2,
                where=ROWS),
    "classes+all": dict(ignore_index=-100, weight=W, label_smoothing=0.2,
                        z_loss=1e-2, where=CLASSES),
}


@pytest.fixture(autouse=True)
def small_blocks(request, monkeypatch):
  # Rows of 37 classes in blocks of 16: every Pallas test crosses blocks
  # (the online logsumexp) and ends on a ragged one, the label and the -inf
  # logits anywhere.
  if "vocabulary_size" not in request.node.name:
    monkeypatch.setattr(pallas_cross_entropy, "MAX_BLOCK", 16)


def arrays(options, dtype=jnp.float32):
  return {k: jnp.asarray(v, dtype) if k == "weight" else
          jnp.asarray(v) if k == "where" else v for k, v in options.items()}


def value_and_grads(implementation, x, labels, reduction="mean",
                    wrt_weight=False, **kw):
  """Loss and its gradient (of the sum) wrt logits, and weight if asked."""
  def total(x, weight):
    if weight is not None:
      kw["weight"] = weight
    loss = CE(x, labels, reduction=reduction, implementation=implementation,
              **kw)
    return jnp.sum(loss), loss
  argnums = (0, 1) if wrt_weight else 0
  (_, loss), grads = jax.value_and_grad(total, argnums, has_aux=True)(
      x, kw.pop("weight", None))
  return loss, grads


@functools.partial(jax.jit, static_argnames=("implementations", "statics",
                                             "reductions"))
def every_reduction(x, labels, arrays, implementations, statics,
                    reductions=("none", "mean")):
  """Per implementation and reduction, loss and gradient: one compilation."""
  out = {}
  for implementation in implementations:
    for reduction in reductions:
      def total(x):
        loss = CE(x, labels, reduction=reduction,
                  implementation=implementation, **arrays, **dict(statics))
        return jnp.sum(loss), loss
      (_, loss), grad = jax.value_and_grad(total, has_aux=True)(x)
      out[implementation, reduction] = (loss, grad)
  return out


def compare_paths(x, labels, options, implementations=("xla", "pallas"),
                  reductions=("none", "mean"), rtol=2e-6, atol=1e-6):
  arrays_ = {k: v for k, v in options.items() if k in ("weight", "where")}
  statics = tuple(sorted((k, v) for k, v in options.items()
                         if k not in arrays_))
  out = every_reduction(x, labels, arrays_,
                        ("reference",) + tuple(implementations), statics,
                        reductions)
  for (implementation, reduction), got in out.items():
    assert_close(got, out["reference", reduction], rtol, atol)
  return out


def assert_close(got, want, rtol=2e-6, atol=1e-6):
  for g, w in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(want)):
    assert g.dtype == w.dtype
    np.testing.assert_allclose(np.asarray(g, np.float64),
                               np.asarray(w, np.float64), rtol=rtol, atol=atol)


# The Pallas kernels (interpret mode off GPUs) on the option sets that reach
# every branch of the kernels; the XLA path on all of them.
@pytest.mark.parametrize("name", [
    name if name in ("all", "classes+all")
    else pytest.param(name, marks=pytest.mark.slow) for name in OPTIONS])
def test_paths_match_reference(name):
  options = arrays(OPTIONS[name])
  labels = IGNORED if "ignore_index" in options else LABELS
  pallas = name in ("plain", "all", "classes+all")
  compare_paths(jnp.asarray(X, jnp.float32), labels, options,
                ("xla", "pallas") if pallas else ("xla",),
                ("none", "mean", "sum") if name == "all" else ("none", "mean"))


def test_matches_float64_numpy_reference():
  kw = dict(weight=W, ignore_index=-100, label_smoothing=0.2, z_loss=1e-2)
  want = ref.softmax_cross_entropy_with_integer_labels(X, IGNORED, **kw)
  with jax.enable_x64(True):
    for implementation in ("xla", "pallas"):
      got = CE(jnp.asarray(X), jnp.asarray(IGNORED),
               implementation=implementation, **kw)
      assert got.dtype == jnp.float64
      np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.slow
def test_weight_gradient_matches_reference():
  # With smoothing the class weights enter the kernels' per-row sums too.
  kw = arrays(OPTIONS["classes+all"])
  weight, where = kw.pop("weight"), kw.pop("where")

  @jax.jit
  def grads(x, weight, where):
    def f(x, weight, implementation):
      return CE(x, IGNORED, weight=weight, where=where, reduction="mean",
                implementation=implementation, **kw)
    return {i: jax.value_and_grad(f, (0, 1))(x, weight, i)
            for i in ("reference", "xla", "pallas")}
  x = jnp.asarray(X, jnp.float32)
  out = grads(x, weight, where.at[2, :3].set(True))
  assert_close(out["xla"], out["reference"])
  assert_close(out["pallas"], out["reference"])
  # A row that the class mask empties is dropped: the reference path's
  # weight gradient reads 0 * inf there, these paths give its exact 0.
  out = grads(x, weight, where)
  for implementation in ("xla", "pallas"):
    assert np.all(np.isfinite(out[implementation][1][1]))


@pytest.mark.parametrize("dtype", [
    "bfloat16", *(pytest.param(d, marks=pytest.mark.slow)
                  for d in FLOATS if d != "bfloat16")])
def test_dtypes(dtype):
  statics = (("ignore_index", -100), ("label_smoothing", 0.1),
             ("z_loss", 1e-3))
  with dtype_context(dtype):
    x = jnp.asarray(X, dtype)
    # Interpret mode compiles slowly: off GPUs bfloat16 stands for the other
    # dtypes in the Pallas kernels, which upcast on load like the XLA path.
    implementations = ("reference", "xla") + (
        ("pallas",) if dtype == "bfloat16" or GPU else ())
    out = every_reduction(x, jnp.asarray(IGNORED), {}, implementations,
                          statics, ("mean",))
    # Half precision: both paths round float32 gradients to the logits'
    # dtype, an ulp apart at most. Wider: a few ulps of the arithmetic.
    rtol = {"float32": 4e-6, "float64": 1e-13}.get(
        dtype, float(jnp.finfo(dtype).eps))
    for (implementation, reduction), (loss, grad) in out.items():
      want_loss, want_grad = out["reference", reduction]
      assert loss.dtype == jnp.promote_types(dtype, jnp.float32)
      assert grad.dtype == x.dtype
      np.testing.assert_allclose(
          loss, want_loss, rtol=1e-6 if dtype != "float64" else 1e-12)
      np.testing.assert_allclose(np.asarray(grad, np.float64),
                                 np.asarray(want_grad, np.float64),
                                 rtol=rtol, atol=rtol / 64)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_jit_and_eager_agree(mode):
  x = jnp.asarray(X, jnp.float32)

  def f(x, implementation):
    return CE(x, IGNORED, ignore_index=-100, reduction="mean",
              implementation=implementation)
  got = run(mode, jax.value_and_grad(f), x, "xla")
  assert_close(got, jax.jit(jax.value_and_grad(f), static_argnums=1)(
      x, "reference"))


def test_equal_optax_by_default():
  x = jnp.asarray(X, jnp.float32)

  @jax.jit
  def both(x):
    mine = jax.value_and_grad(lambda x: CE(x, LABELS, reduction="mean"))(x)
    theirs = jax.value_and_grad(
        lambda x: optax.losses.softmax_cross_entropy_with_integer_labels(
            x, LABELS).mean())(x)
    return mine, theirs
  mine, theirs = both(x)
  assert_close(mine, theirs)


def test_extreme_inputs():
  x = jnp.asarray(X, jnp.float32)
  x = x.at[0, 3].set(-jnp.inf)                   # an impossible class
  x = x.at[1].set(jnp.where(jnp.arange(C) == LABELS[1], 0.0, -jnp.inf))
  x = x.at[2].mul(1e4 / 3)                       # logits of 1e4
  x = x.at[3, LABELS[3]].set(-jnp.inf)           # impossible label: inf
  labels = LABELS.copy()
  labels[4] = C + 2                              # out of range: NaN
  labels[5] = -100                               # ignored
  options = dict(ignore_index=-100, label_smoothing=0.1,
                 weight=jnp.asarray(W, jnp.float32))
  out = compare_paths(x, labels, options, reductions=("none",))
  loss, grad = map(np.asarray, out["xla", "none"])
  assert np.isinf(loss[3]) and np.isnan(loss[4]) and loss[5] == 0
  assert np.all(np.isfinite(loss[:3]))
  assert np.all(np.isfinite(grad))
  assert np.all(grad[[4, 5]] == 0)


def test_dropped_rows_are_exact_zeros_whatever_they_hold():
  x = jnp.asarray(X, jnp.float32).at[1].set(jnp.nan).at[4].set(jnp.inf)
  options = dict(ignore_index=-100, label_smoothing=0.1, z_loss=1e-3)
  out = every_reduction(x, IGNORED, {}, ("xla", "pallas"),
                        tuple(sorted(options.items())), ("mean",))
  for loss, grad in out.values():
    assert np.all(np.isfinite(loss))
    assert np.all(np.isfinite(grad))
    assert np.all(np.asarray(grad)[[1, 4]] == 0)


@pytest.mark.parametrize("case", [
    "ignored", pytest.param("rows", marks=pytest.mark.slow),
    pytest.param("classes", marks=pytest.mark.slow)])
def test_mean_over_nothing_is_zero(case):
  x = jnp.asarray(X, jnp.float32)
  labels, options = {
      "ignored": (np.full((N,), -100), dict(ignore_index=-100, z_loss=1e-3)),
      "rows": (LABELS, dict(where=jnp.zeros((N,), bool))),
      "classes": (LABELS, dict(where=jnp.zeros((N, C), bool)))}[case]
  arrays_ = {k: v for k, v in options.items() if k == "where"}
  statics = tuple((k, v) for k, v in options.items() if k != "where")
  out = every_reduction(x, labels, arrays_, ("reference", "xla", "pallas"),
                        statics, ("mean",))
  for loss, grad in out.values():
    assert np.all(loss == 0) and np.all(grad == 0)


def test_empty_batch():
  x = jnp.zeros((0, C), jnp.float32)
  out = compare_paths(x, jnp.zeros((0,), jnp.int32), {})
  assert out["pallas", "none"][0].shape == (0,)
  assert out["pallas", "mean"][0] == 0


@pytest.mark.slow
def test_class_axis_and_batch_shape():
  x = jnp.asarray(rng.normal(size=(2, C, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, C, (2, 3)))
  out = compare_paths(x, labels, dict(axis=1, label_smoothing=0.1),
                      ("xla",), ("none",))
  assert out["xla", "none"][0].shape == (2, 3)


@pytest.mark.slow
def test_vmap_matches_batched():
  x = jnp.asarray(rng.normal(size=(3, N, C)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, C, (3, N)))

  def f(x, labels):
    return jnp.sum(CE(x, labels, implementation="xla", label_smoothing=0.1,
                      weight=jnp.asarray(W, jnp.float32)))

  @jax.jit
  def both(x, labels):
    return (jax.vmap(jax.value_and_grad(f))(x, labels),
            jax.grad(f)(x, labels))
  (values, grads), batched = both(x, labels)
  assert_close(grads, batched)
  assert_close(jnp.sum(values), f(x, labels), rtol=1e-6)


@pytest.mark.slow
def test_checkpoint_and_jit_compose():
  x = jnp.asarray(X, jnp.float32)
  kw = arrays(OPTIONS["all"])

  def f(x):
    return CE(x, IGNORED, reduction="mean", implementation="xla", **kw)
  want = jax.value_and_grad(f)(x)
  assert_close(jax.jit(jax.value_and_grad(jax.checkpoint(f)))(x), want)


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_every_autodiff_mode_matches_the_reference(implementation):
  # The statistics' tangent rule serves every mode: forward (jvp, jacfwd,
  # linearize), reverse (its transpose) and higher orders (differentiating
  # it). Every option on, an impossible class, dropped rows.
  x = jnp.asarray(X[:4, :7], jnp.float32).at[0, 5].set(-jnp.inf)
  labels = jnp.asarray(IGNORED[:4] % 7).at[1].set(-100)
  kw = dict(ignore_index=-100, weight=jnp.asarray(W[:7], jnp.float32),
            label_smoothing=0.2, z_loss=1e-2,
            where=jnp.asarray([True, True, False, True]))

  def f(implementation):
    return lambda x: CE(x, labels, reduction="mean",
                        implementation=implementation, **kw)
  fast, slow = f(implementation), f("reference")
  t = jnp.asarray(rng.normal(size=x.shape), jnp.float32).at[0, 5].set(0.0)
  for got, want in [
      (jax.jvp(fast, (x,), (t,)), jax.jvp(slow, (x,), (t,))),
      (jax.linearize(fast, x)[1](t), jax.linearize(slow, x)[1](t)),
      (jax.grad(fast)(x), jax.grad(slow)(x)),
      (jax.jacfwd(fast)(x), jax.jacrev(slow)(x))]:
    assert_close(got, want, rtol=2e-5, atol=1e-6)
  # Second order on finite logits, where the reference's Hessian is finite.
  finite = jnp.where(jnp.isinf(x), -30.0, x)
  assert_close(jax.hessian(fast)(finite), jax.hessian(slow)(finite),
               rtol=2e-5, atol=1e-6)
  hvp = jax.grad(lambda x: jnp.vdot(jax.grad(fast)(x), t))(finite)
  assert_close(hvp, jax.grad(lambda x: jnp.vdot(jax.grad(slow)(x), t))(
      finite), rtol=2e-5, atol=1e-6)


@pytest.mark.slow
def test_reference_keeps_higher_order_autodiff():
  x = jnp.asarray(X[:2, :5], jnp.float32)

  def f(x):
    return CE(x, LABELS[:2] % 5, reduction="sum", implementation="reference")
  hessian = jax.hessian(f)(x)
  p = jax.nn.softmax(x[0])
  np.testing.assert_allclose(hessian[0, :, 0, :],
                             np.diag(p) - np.outer(p, p), atol=1e-6)


@pytest.mark.parametrize("dtype,name", [
    ("bfloat16", "all"), ("bfloat16", "classes+all"),
    pytest.param("bfloat16", "plain", marks=pytest.mark.slow),
    # float32 on CPUs: the exponentials kept for the backward pass.
    ("float32", "all")])
def test_no_class_sized_float32_temporary(name, dtype):
  # A memory property, not a timing: the value and gradient keep O(N)
  # statistics, never an [N, C] float32 array (nor any [N, C] array but the
  # gradient, which is an output).
  rows, classes = 256, 4096
  x = jnp.zeros((rows, classes), dtype)
  labels = jnp.zeros((rows,), jnp.int32)
  options = dict(OPTIONS[name])
  arrays_ = {}
  if "weight" in options:
    arrays_["weight"] = jnp.ones((classes,), jnp.float32)
  if "where" in options:
    arrays_["where"] = jnp.ones(x.shape[:options["where"].ndim], bool)
  statics = {k: v for k, v in options.items() if k not in arrays_}

  def f(x, arrays_):
    return CE(x, labels, reduction="mean", implementation="xla", **arrays_,
              **statics)
  compiled = jax.jit(jax.value_and_grad(f)).lower(x, arrays_).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    pytest.skip("this backend reports no memory analysis")
  bound = rows * classes
  if "where" in arrays_ and arrays_["where"].ndim == 2 and not GPU:
    # XLA:CPU hands reductions to a library that takes its input from
    # memory: the class-masked logits become one float32 temporary there.
    bound = rows * classes * 4 + 256 * rows
  assert analysis.temp_size_in_bytes < bound


def test_pallas_lowers_to_triton():
  # Lowering for CUDA needs no GPU: this checks that the kernels, options
  # included, are within what the Triton lowering supports.
  x = jnp.zeros((8, 300), jnp.bfloat16)
  labels = jnp.zeros((8,), jnp.int32)
  config = kernel_ce.Config(interpret=False)

  def f(x, weight, where):
    return _multiclass.integer_cross_entropy(
        "f", x, labels, axis=-1, where=where, ignore_index=-100,
        weight=weight, label_smoothing=0.1, z_loss=1e-4, reduction="mean",
        implementation="pallas", config=config)
  for where in (None, jnp.ones((8, 300), bool)):
    lowered = jax.jit(jax.value_and_grad(f)).trace(
        x, jnp.ones((300,)), where).lower(lowering_platforms=("cuda",))
    # The statistics kernel; the gradient is XLA's fused transpose.
    assert lowered.as_text().count("xla.gpu.triton") == 1


@pytest.mark.slow  # Over 15 s on 2 shared cores.
@pytest.mark.parametrize("launch", [
    dict(lane_sums=True), dict(num_stages=3, num_warps=2),
    dict(lane_sums=True, num_stages=2, block=8)])
def test_pallas_launch_configurations_agree(launch):
  # The launch options change how the kernels walk a row, never the result:
  # every option on, with an impossible class and a class mask.
  x = jnp.asarray(X, jnp.float32).at[0, 5].set(-jnp.inf)

  def f(config, x, where):
    return _multiclass.integer_cross_entropy(
        "f", x, jnp.asarray(IGNORED), axis=-1, where=where,
        ignore_index=-100, weight=jnp.asarray(W, jnp.float32),
        label_smoothing=0.2, z_loss=1e-2, reduction="mean",
        implementation="pallas", config=config)
  for where in (None, jnp.asarray(CLASSES)):
    want = jax.value_and_grad(f, argnums=1)(kernel_ce.Config(), x, where)
    got = jax.value_and_grad(f, argnums=1)(
        kernel_ce.Config(**launch), x, where)
    assert_close(got[0], want[0], rtol=1e-6)
    assert_close(got[1], want[1], rtol=1e-6, atol=1e-9)
  lowered = jax.jit(jax.value_and_grad(functools.partial(
      f, kernel_ce.Config(interpret=False, **launch)))).trace(
          x.astype(jnp.bfloat16), None).lower(lowering_platforms=("cuda",))
  assert lowered.as_text().count("xla.gpu.triton") == 1


def test_auto_picks_pallas_on_gpus_for_many_classes(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  big = jnp.zeros((2, kernel_ce.PALLAS_MIN_CLASSES), jnp.bfloat16)
  small = jnp.zeros((2, 1000), jnp.bfloat16)

  def resolve(x, where=None, implementation="auto"):
    return kernel_ce.resolve("f", implementation, x, -1, where)
  assert resolve(big) == "pallas"
  assert resolve(small) == "xla"
  assert resolve(big.astype(jnp.float32)) == "pallas"
  assert resolve(big, where=jnp.ones(big.shape, bool)) == "xla"
  assert resolve(big, where=jnp.ones((2,), bool)) == "pallas"
  assert resolve(big, implementation="reference") == "reference"
  huge = jax.ShapeDtypeStruct((2**31 // 8192, 8192), jnp.bfloat16)
  assert resolve(huge) == "xla"
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert resolve(big) == "xla"


def test_auto_is_xla_off_gpus():
  if GPU:
    pytest.skip("on GPUs auto may pick the Pallas kernels")
  x = jnp.asarray(X, jnp.float32)
  text = jax.jit(lambda x: CE(x, LABELS)).lower(x).as_text()
  assert "pallas" not in text
  np.testing.assert_array_equal(CE(x, LABELS),
                                CE(x, LABELS, implementation="xla"))


@pytest.mark.parametrize("bad", ["fast", None, 1])
def test_bad_implementation(bad):
  with pytest.raises(ValueError, match="softmax_cross_entropy_with_integer_"
                     "labels: implementation must be one of 'auto', 'xla', "
                     f"'pallas', 'reference', got {bad!r}"):
    CE(jnp.asarray(X), LABELS, implementation=bad)


@pytest.mark.skipif(not GPU, reason="compiled Triton kernels need a GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_pallas_on_gpu_at_vocabulary_size(dtype):
  rows, classes = 64, 50257
  key1, key2 = jax.random.split(jax.random.key(0))
  x = (4 * jax.random.normal(key1, (rows, classes))).astype(dtype)
  labels = jax.random.randint(key2, (rows,), 0, classes).at[::7].set(-100)
  kw = dict(ignore_index=-100, label_smoothing=0.1, z_loss=1e-4,
            weight=jnp.linspace(0.5, 2, classes))
  for options in ({}, kw):
    want = value_and_grads("xla", x, labels, "mean", **dict(options))
    got = value_and_grads("pallas", x, labels, "mean", **dict(options))
    # The online logsumexp rounds differently from the two-pass one: a few
    # float32 ulps of the logsumexp, or one ulp of the bfloat16 gradient.
    rtol = max(float(jnp.finfo(dtype).eps), 1e-5)
    assert_close(got[0], want[0], rtol=1e-5)
    assert_close(got[1], want[1], rtol=rtol, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["none", "rows", "classes"])
def test_options_grid_matches_reference(where):
  # Every combination of the options, on logits with an impossible class.
  x = jnp.asarray(X, jnp.float32).at[0, 5].set(-jnp.inf)
  where = {"none": {}, "rows": dict(where=jnp.asarray(ROWS)),
           "classes": dict(where=jnp.asarray(CLASSES))}[where]
  for weight, smoothing, z in itertools.product(
      (None, W), (0.0, 0.4), (0.0, 1e-2)):
    options = dict(where, ignore_index=-100, label_smoothing=smoothing,
                   z_loss=z)
    if weight is not None:
      options["weight"] = jnp.asarray(weight, jnp.float32)
    compare_paths(x, IGNORED, options, ("xla",), ("mean",))


def test_statistics_kernel_loops_over_its_blocks_inside_a_loss_body():
  # A loss's body traces with jax.numpy inlined (jaxloss._jit.inlined),
  # under which lax.fori_loop would unroll: the kernel's loop over the
  # blocks of a row must stay one loop, as it is traced outside a body.
  from jaxloss import _jit  # noqa: PLC0415
  x = jnp.ones((4, 1024), jnp.float32)

  def stats(x):
    return pallas_cross_entropy.statistics(
        x, None, None, smoothing=False, dtype=jnp.float32, interpret=True,
        block=128)

  for fn in (stats, _jit.inlined(stats)):
    jaxpr = str(jax.make_jaxpr(fn)(x))
    assert jaxpr.count("scan") + jaxpr.count("while") == 1, fn


@pytest.mark.skipif(GPU or jax.default_backend() != "cpu",
                    reason="the plain support sums are XLA:CPU's")
@pytest.mark.parametrize("weighted", [False, True])
def test_smoothing_sums_are_plain_unless_not_finite(weighted):
  # With label smoothing the support's sums (of w x, w and 1 over the
  # finite logits) are the plain sums over every class behind one scalar
  # condition, in the value and in the gradient's forward pass; a -inf
  # logit (outside the support) takes the support's sums: the same numbers.
  x = jnp.asarray(X, jnp.float32)
  labels = jnp.asarray(LABELS)
  kw = dict(label_smoothing=0.2,
            weight=jnp.asarray(W, jnp.float32) if weighted else None)

  def f(x, implementation="xla"):
    return CE(x, labels, implementation=implementation, **kw)

  def total(x, implementation="xla"):
    return jnp.sum(f(x, implementation))

  for fn in (f, jax.value_and_grad(total)):
    hlo = jax.jit(fn).lower(x).compile().as_text()
    assert hlo.count("conditional(") == 1
  impossible = x.at[2, (LABELS[2] + 1) % C].set(-jnp.inf)
  for logits in (x, impossible, impossible.at[4].set(jnp.inf)):
    for fn in (f, jax.value_and_grad(total)):
      got = jax.jit(fn)(logits)
      want = jax.jit(fn, static_argnums=1)(logits, "reference")
      for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)
  batched = jax.vmap(f)(jnp.stack([x, impossible]))
  np.testing.assert_allclose(batched[1], f(impossible, "reference"),
                             rtol=2e-5, atol=1e-6)
