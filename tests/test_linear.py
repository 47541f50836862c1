import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import jaxloss
import reference as ref
from helpers import assert_finite, run
from jaxloss import _linear

LCE = jaxloss.linear_softmax_cross_entropy
CE = jaxloss.softmax_cross_entropy_with_integer_labels
rng = np.random.default_rng(6)
N, D, V = 12, 6, 15
HIDDEN = rng.normal(0, 1, (N, D))
KERNEL = rng.normal(0, 0.7, (D, V))
BIAS = rng.normal(0, 1, (V,))
LABELS = rng.integers(0, V, (N,))
LABELS[[1, 7]] = -100
WEIGHT = rng.uniform(0.5, 2, (V,))
WHERE = np.ones(N, bool)
WHERE[[3, 4]] = False
# A -inf bias marks an impossible class; no label sits on it.
INF_BIAS = BIAS.copy()
INF_BIAS[[2, 9]] = -np.inf
LABELS[np.isin(LABELS, [2, 9])] = 0

OPTIONS = {
    "plain": dict(),
    "all": dict(bias=True, weight=True, ignore_index=-100, where=True,
                label_smoothing=0.2, z_loss=1e-2, logit_softcap=3.0),
    "inf_bias": dict(bias="inf", weight=True, ignore_index=-100,
                     where=True, label_smoothing=0.3, z_loss=1e-2),
}


def keywords(options, dtype=jnp.float64):
  kw = dict(options)
  bias = {True: BIAS, "inf": INF_BIAS, None: None}[kw.pop("bias", None)]
  if kw.pop("weight", False):
    kw["weight"] = jnp.asarray(WEIGHT, dtype)
  if kw.pop("where", False):
    kw["where"] = jnp.asarray(WHERE)
  return (None if bias is None else jnp.asarray(bias, dtype)), kw


def materialized(hidden, kernel, labels, bias=None, logit_softcap=None,
                 **kw):
  """The unfused loss: ``hidden @ kernel`` (accumulated in float32, in the
  inputs' dtype as XLA gives it), then the CE in float32 (float64), its
  reference implementation (plain JAX, every autodiff mode)."""
  kw.setdefault("implementation", "reference")
  return CE(logits(hidden, kernel, bias, logit_softcap), labels, **kw)


def logits(hidden, kernel, bias=None, logit_softcap=None):
  """``hidden @ kernel`` accumulated in float32 (float64) and rounded to the
  inputs' dtype, then read in float32 (float64), plus the bias, capped."""
  compute = jnp.result_type(hidden, kernel)
  stat = jnp.promote_types(compute, jnp.float32)
  x = jnp.dot(hidden, kernel, preferred_element_type=stat).astype(compute)
  x = x.astype(stat)
  if bias is not None:
    x = x + jnp.broadcast_to(bias.astype(stat), x.shape)
  if logit_softcap is not None:
    x = logit_softcap * jnp.tanh(x / logit_softcap)
  return x


def compare(hidden, kernel, bias, labels, *, chunk_size=None, **kw):
  """Fused and unfused: the loss, and the value and gradients of its sum.

  One compilation for both (compiling dominates the run time of this file).
  """
  argnums = (0, 1) if bias is None else (0, 1, 2)

  def results(fn, **extra):
    def loss(h, k, b):
      return fn(h, k, labels, bias=b, **kw, **extra)

    def total(h, k, b):
      return jnp.sum(loss(h, k, b))

    return lambda *a: (loss(*a), jax.value_and_grad(total, argnums)(*a))

  fused = results(LCE, chunk_size=chunk_size)
  unfused = results(materialized)
  return jax.jit(lambda *a: (fused(*a), unfused(*a)))(hidden, kernel, bias)


def assert_close(got, want, **tol):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert g.shape == w.shape and g.dtype == w.dtype
    np.testing.assert_allclose(g, w, **tol)


# Chunks: None is one chunk; an int, token chunks over the whole vocabulary
# (one pass for a scalar loss); a pair, tokens by classes (two passes). 12
# tokens by 5 and 15 classes by 6 end every loop on a shorter chunk.
CASES = [
    ("all", "none", None), ("all", "mean", None), ("all", "sum", None),
    ("all", "mean", (4, 5)), ("all", "none", (5, 6)), ("all", "mean", 5),
    ("inf_bias", "mean", None), ("inf_bias", "none", (4, 5)),
    ("plain", "mean", 4),
]


@pytest.mark.parametrize("options,reduction,chunk_size", CASES, ids=str)
def test_matches_materialized(options, reduction, chunk_size):
  with jax.enable_x64(True):
    bias, kw = keywords(OPTIONS[options])
    got, want = compare(jnp.asarray(HIDDEN), jnp.asarray(KERNEL), bias,
                        LABELS, chunk_size=chunk_size, reduction=reduction,
                        **kw)
    assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert_finite(got[1][1])


def test_numpy_reference():
  kw = dict(weight=WEIGHT, ignore_index=-100, label_smoothing=0.1,
            z_loss=1e-3)
  with jax.enable_x64(True):
    got = LCE(HIDDEN, KERNEL, LABELS, bias=INF_BIAS, chunk_size=(4, 5), **kw)
  want = ref.softmax_cross_entropy_with_integer_labels(
      HIDDEN @ KERNEL + INF_BIAS, LABELS, **kw)
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_float32_matches_float64_reference():
  bias, kw = keywords(OPTIONS["all"], jnp.float32)
  got, _ = compare(jnp.asarray(HIDDEN, jnp.float32),
                   jnp.asarray(KERNEL, jnp.float32), bias, LABELS,
                   reduction="mean", **kw)
  with jax.enable_x64(True):
    bias, kw = keywords(OPTIONS["all"])
    _, want = compare(jnp.asarray(HIDDEN), jnp.asarray(KERNEL), bias, LABELS,
                      reduction="mean", **kw)
  assert got[0].dtype == jnp.float32
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype,reduction,chunk_size", [
    ("bfloat16", "mean", 4), ("float16", "none", (4, 5))], ids=str)
def test_half_precision(dtype, reduction, chunk_size):
  """Half inputs: float32 statistics and loss, gradients in the inputs' dtype.

  The reference holds the same half-precision logits, upcast for the CE. Both
  round the logits' gradient to the inputs' dtype on its way to the gradients
  (the fused loss before its matmuls), hence the half tolerance there.
  """
  h, k = (jnp.asarray(a, dtype) for a in (HIDDEN, KERNEL))
  bias, kw = keywords(OPTIONS["all"], dtype)
  got, want = compare(h, k, bias, LABELS, chunk_size=chunk_size,
                      reduction=reduction, **kw)
  loss, (total, grads) = got
  assert loss.dtype == total.dtype == jnp.float32
  assert [g.dtype for g in grads] == [h.dtype, k.dtype, bias.dtype]
  np.testing.assert_allclose(loss, want[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(total, want[1][0], rtol=1e-5)
  for g, w in zip(grads, want[1][1]):
    g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
    np.testing.assert_allclose(g, w, atol=1e-2 * np.max(np.abs(w)))


def test_mixed_dtypes_give_gradients_in_each_dtype():
  h = jnp.asarray(HIDDEN, jnp.bfloat16)
  k = jnp.asarray(KERNEL, jnp.float32)
  b = jnp.asarray(BIAS, jnp.float16)
  got, want = compare(h, k, b, LABELS, ignore_index=-100, reduction="sum")
  grads = got[1][1]
  assert [g.dtype for g in grads] == [h.dtype, k.dtype, b.dtype]
  for g, w in zip(grads, want[1][1]):
    g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
    np.testing.assert_allclose(g, w, atol=1e-2 * np.max(np.abs(w)))


@pytest.mark.slow  # Over 15 s on 2 shared cores.
def test_eager_matches_jit():
  bias, kw = keywords(OPTIONS["all"], jnp.float32)
  h, k = (jnp.asarray(a, jnp.float32) for a in (HIDDEN, KERNEL))
  got = run("eager", LCE, h, k, LABELS, bias=bias, **kw)
  want = run("jit", LCE, h, k, LABELS, bias=bias, **kw)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_vmap_over_leading_axis():
  hs = jnp.asarray(rng.normal(size=(3, 4, D)), jnp.float32)
  ys = jnp.asarray(rng.integers(0, V, (3, 4)))
  k = jnp.asarray(KERNEL, jnp.float32)
  ks = jnp.stack([k, 2 * k, -k])

  def mean(h, k, y):
    return LCE(h, k, y, label_smoothing=0.1, reduction="mean", chunk_size=2)

  def per_token(h, k, y):
    return jnp.sum(LCE(h, k, y, label_smoothing=0.1, chunk_size=(2, 5)))

  def unfused(h, k, y):
    return jnp.sum(CE(h @ k, y, label_smoothing=0.1))

  @jax.jit
  def both():
    fused = (jax.value_and_grad(lambda k: jnp.sum(
        jax.vmap(mean, (0, None, 0))(hs, k, ys)))(k),
             jax.vmap(jax.grad(per_token))(hs, ks, ys))
    want = (jax.value_and_grad(lambda k: sum(
        unfused(hs[i], k, ys[i]) / 4 for i in range(3)))(k),
            jax.vmap(jax.grad(unfused))(hs, ks, ys))
    return fused, want

  got, want = both()
  assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_batch_axes_are_flattened():
  h = jnp.asarray(HIDDEN.reshape(2, 6, D), jnp.float32)
  y = LABELS.reshape(2, 6)
  where = jnp.asarray(WHERE.reshape(2, 6))
  k = jnp.asarray(KERNEL, jnp.float32)
  got = LCE(h, k, y, ignore_index=-100, where=where)
  assert got.shape == (2, 6)
  want = materialized(h.reshape(N, D), k, LABELS, ignore_index=-100,
                      where=jnp.asarray(WHERE))
  np.testing.assert_allclose(got.reshape(N), want, rtol=1e-6)


@pytest.mark.parametrize("reduction", ("none", "mean"))
def test_dropped_rows_have_zero_loss_and_gradient(reduction):
  """Garbage in dropped rows (huge hidden states) leaves no trace."""
  dropped = [1, 3, 4, 7]
  h = jnp.asarray(HIDDEN, jnp.float32).at[3].set(1e30).at[1].set(-1e30)
  k = jnp.asarray(KERNEL, jnp.float32)
  got, want = compare(h, k, None, LABELS, ignore_index=-100,
                      where=jnp.asarray(WHERE), label_smoothing=0.1,
                      reduction=reduction, chunk_size=4)
  loss, (_, (dh, dk)) = got
  assert_finite(got)
  assert np.all(np.asarray(dh)[dropped] == 0)
  if reduction == "none":
    assert np.all(np.asarray(loss)[dropped] == 0)
  np.testing.assert_allclose(loss, want[0], rtol=1e-6)
  np.testing.assert_allclose(dk, want[1][1][1], rtol=1e-5, atol=1e-7)


def test_nothing_kept_is_zero_with_zero_gradient():
  labels = np.full(N, -100)
  h, k = (jnp.asarray(a, jnp.float32) for a in (HIDDEN, KERNEL))
  loss, grads = jax.value_and_grad(
      lambda h, k: LCE(h, k, labels, ignore_index=-100, reduction="mean"),
      (0, 1))(h, k)
  assert loss == 0
  assert all(np.all(np.asarray(g) == 0) for g in grads)


def test_no_tokens():
  h = jnp.zeros((0, D))
  k = jnp.asarray(KERNEL, jnp.float32)
  labels = jnp.zeros((0,), jnp.int32)
  assert LCE(h, k, labels).shape == (0,)
  loss, dk = jax.value_and_grad(
      lambda k: LCE(h, k, labels, reduction="mean"))(k)
  assert loss == 0 and np.all(np.asarray(dk) == 0)


@pytest.mark.parametrize("reduction,chunk_size", [
    ("none", (4, 5)), ("mean", 4)], ids=str)
def test_out_of_range_label_is_nan_and_spares_other_rows(reduction,
                                                         chunk_size):
  labels = LABELS.copy()
  labels[[0, 5]] = [V, -1]
  h, k = (jnp.asarray(a, jnp.float32) for a in (HIDDEN, KERNEL))
  got, want = compare(h, k, None, labels, ignore_index=-100,
                      weight=jnp.asarray(WEIGHT, jnp.float32),
                      reduction=reduction, chunk_size=chunk_size)
  loss, (total, grads) = got
  assert np.isnan(total)
  if reduction == "none":
    assert np.isnan(loss[0]) and np.isnan(loss[5])
  assert_finite(grads)
  assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_checked_rejects_out_of_range_labels():
  labels = LABELS.copy()
  labels[5] = V
  h, k = (jnp.asarray(a, jnp.float32) for a in (HIDDEN, KERNEL))
  lce = jaxloss.checked(LCE)
  lce(h, k, LABELS, ignore_index=-100)
  with pytest.raises(jaxloss.CheckError, match=(
      r"linear_softmax_cross_entropy: labels must be in \[0, 15\) or equal "
      r"ignore_index; first offending element labels\[5\] = 15")):
    lce(h, k, labels, ignore_index=-100)


def test_extreme_logits():
  """Logits in the thousands: finite loss and gradients, as unfused."""
  h = 300 * jnp.asarray(HIDDEN, jnp.float32)
  bias, kw = keywords(OPTIONS["inf_bias"], jnp.float32)
  got, want = compare(h, jnp.asarray(KERNEL, jnp.float32), bias, LABELS,
                      reduction="mean", chunk_size=(N, 5), **kw)
  assert_finite(got)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.max(np.abs(w)))


def test_label_on_impossible_class_is_inf():
  labels = LABELS.copy()
  labels[0] = 2
  with jax.enable_x64(True):
    got = LCE(HIDDEN, KERNEL, labels, bias=INF_BIAS, ignore_index=-100)
    want = materialized(jnp.asarray(HIDDEN), jnp.asarray(KERNEL), labels,
                        bias=jnp.asarray(INF_BIAS), ignore_index=-100)
    assert got[0] == np.inf
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_gradients_numerically():
  with jax.enable_x64(True):
    _, kw = keywords(OPTIONS["all"])

    def f(h, k, b):
      return LCE(h, k, LABELS, bias=b, reduction="mean", chunk_size=(N, 5),
                 **kw)

    check_grads(f, (jnp.asarray(HIDDEN), jnp.asarray(KERNEL),
                    jnp.asarray(BIAS)), order=1, modes=("rev",))


def test_weight_is_a_constant():
  k = jnp.asarray(KERNEL, jnp.float32)
  w = jnp.asarray(WEIGHT, jnp.float32)
  dw = jax.grad(lambda w: LCE(HIDDEN.astype(np.float32), k, LABELS, weight=w,
                              ignore_index=-100, reduction="mean"))(w)
  assert np.all(np.asarray(dw) == 0)


def test_default_chunks_bound_the_logits(monkeypatch):
  """A tiny budget: class chunks; blocks for the kernel gradient."""
  monkeypatch.setattr(_linear, "_CHUNK_BYTES", 4 << 10)
  monkeypatch.setattr(_linear, "_MIN_VOCAB_CHUNK", 128)
  tokens, classes = 24, 300
  assert _linear._chunk_sizes(None, tokens, classes, jnp.float32, True,
                              "cpu") == (8, 128, False)
  h = jnp.asarray(rng.normal(size=(tokens, D)), jnp.float32)
  k = jnp.asarray(rng.normal(0, 0.5, (D, classes)), jnp.float32)
  y = jnp.asarray(rng.integers(0, classes, (tokens,)))
  # One pass over 8-token chunks: 300 classes make 3 blocks of 100.
  got, want = compare(h, k, None, y, reduction="sum", label_smoothing=0.1,
                      chunk_size=8)
  assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_default_chunks_for_the_benchmark_problems():
  cpu = _linear._chunk_sizes(None, 4096, 32768, jnp.float32, True, "cpu")
  assert cpu == (256, 32768, True)
  per_token = _linear._chunk_sizes(None, 4096, 32768, jnp.float32, False,
                                   "cpu")
  assert per_token == (4096, 2048, False)
  gpu = _linear._chunk_sizes(None, 8192, 128256, jnp.bfloat16, True, "gpu")
  assert gpu == (8192, 4096, False)
  assert _linear._chunk_sizes(100, 4096, 32768, jnp.float32,
                              True) == (100, 32768, True)
  assert _linear._chunk_sizes((100, 1000), 4096, 32768, jnp.float32,
                              True) == (100, 1000, False)


@pytest.mark.torch
def test_torch_parity():
  torch = pytest.importorskip("torch")
  h = torch.tensor(HIDDEN, requires_grad=True)
  w = torch.tensor(KERNEL.T.copy(), requires_grad=True)
  b = torch.tensor(BIAS, requires_grad=True)
  kw = dict(weight=torch.tensor(WEIGHT), ignore_index=-100,
            label_smoothing=0.2)
  loss = torch.nn.functional.cross_entropy(
      torch.nn.functional.linear(h, w, b), torch.tensor(LABELS), **kw)
  loss.backward()
  with jax.enable_x64(True):
    got, grads = jax.value_and_grad(
        lambda h, k, b: LCE(h, k, LABELS, bias=b, weight=WEIGHT,
                            ignore_index=-100, label_smoothing=0.2,
                            reduction="mean", chunk_size=4),
        (0, 1, 2))(HIDDEN, KERNEL, BIAS)
  np.testing.assert_allclose(got, loss.item(), rtol=1e-10)
  for g, t in zip(grads, (h.grad, w.grad.T, b.grad)):
    np.testing.assert_allclose(g, t.numpy(), rtol=1e-9, atol=1e-12)


def _call(**kw):
  args = dict(hidden=HIDDEN.astype(np.float32),
              kernel=KERNEL.astype(np.float32), labels=LABELS)
  args.update(kw)
  return LCE(args.pop("hidden"), args.pop("kernel"), args.pop("labels"),
             **args)


@pytest.mark.parametrize("kw,error,match", [
    (dict(hidden=np.ones((N, D), np.int32)), TypeError,
     "hidden must have a floating dtype, got int32"),
    (dict(kernel=np.ones((D, V), np.int32)), TypeError,
     "kernel must have a floating dtype, got int32"),
    (dict(hidden=np.float32(1.0)), ValueError,
     r"hidden must have at least 1 dimension, got shape \(\)"),
    (dict(kernel=np.ones((D + 1, V), np.float32)), ValueError,
     r"kernel must have shape \(6, V\) \(hidden features by classes\), got "
     r"shape \(7, 15\)"),
    (dict(kernel=np.ones((D,), np.float32)), ValueError,
     r"kernel must have shape \(6, V\)"),
    (dict(kernel=np.ones((D, 0), np.float32)), ValueError,
     r"kernel must have at least one class, got shape \(6, 0\)"),
    (dict(bias=np.ones(V + 1, np.float32)), ValueError,
     r"bias must have shape \(15,\) \(one per class\), got \(16,\)"),
    (dict(bias=np.ones(V, np.int32)), TypeError,
     "bias must have a floating dtype"),
    (dict(labels=LABELS[:5]), ValueError,
     r"labels shape \(5,\) does not broadcast to hidden.s batch shape \(12,\)"),
    (dict(labels=LABELS.astype(np.float32)), ValueError,
     r"labels shape \(12,\) does not broadcast to the logits \(hidden @ "
     r"kernel\) shape \(12, 15\): the class axis 1 must have length 15.*; "
     "floating labels are probabilities, class ids need an integer dtype"),
    (dict(labels=np.ones((N, V), bool)), TypeError,
     "labels must have an integer dtype"),
    (dict(labels=np.full((N, V - 1), 0.1, np.float32)), ValueError,
     r"labels shape \(12, 14\) does not broadcast to the logits \(hidden @ "
     r"kernel\) shape \(12, 15\): the class axis 1 must have length 15, as "
     r"in the logits \(hidden @ kernel\), not 14"),
    (dict(labels=np.full((2, N, V), 0.1, np.float32)), ValueError,
     r"labels shape \(2, 12, 15\) does not broadcast to the logits "
     r"\(hidden @ kernel\) shape \(12, 15\): it has more axes"),
    (dict(labels=np.full((N, V), 0.1, np.float32), ignore_index=-100),
     ValueError, "ignore_index applies to integer labels \\(class ids\\), "
     "got ignore_index=-100 with probability labels of dtype float32"),
    (dict(weight=np.ones(V - 1)), ValueError,
     r"weight must have shape \(15,\) \(one per class\), got \(14,\)"),
    (dict(where=np.ones(N, np.int32)), TypeError,
     "where must be a boolean mask, got int32"),
    (dict(where=np.ones((N, 1), bool)), ValueError,
     r"where shape \(12, 1\) does not broadcast to the batch shape of hidden "
     r"shape \(12,\)"),
    (dict(label_smoothing=1.5), ValueError,
     r"label_smoothing must be in \[0, 1\], got 1.5"),
    (dict(z_loss=-1.0), ValueError, r"z_loss must be in \[0, inf\)"),
    (dict(logit_softcap=0.0), ValueError,
     r"logit_softcap must be in \(0, inf\), got 0.0"),
    (dict(ignore_index=1.5), TypeError, "ignore_index must be an int or None"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(chunk_size=0), TypeError,
     r"chunk_size must be None, a positive int \(tokens per chunk\) or a "
     r"pair \(tokens, classes\) of positive ints, got 0"),
    (dict(chunk_size=(1, 2, 3)), TypeError, "chunk_size must be None"),
    (dict(chunk_size=(4, 0)), TypeError, "chunk_size must be None"),
    (dict(axis_name="model"), ValueError,
     "axis_name 'model' is not bound: call inside jax.shard_map over that "
     "mesh axis"),
    (dict(dtype=jnp.int32), TypeError,
     "dtype must be a floating dtype or None, got 'int32'"),
    (dict(dtype="float33"), TypeError,
     "dtype must be a floating dtype or None, got 'float33'"),
])
def test_errors(kw, error, match):
  with pytest.raises(error, match="linear_softmax_cross_entropy: " + match):
    _call(**kw)


# Every autodiff mode on every path. The hyperparameters are ordinary
# arguments: the softcap differentiated beside hidden, kernel and bias
# against the unfused reference; smoothing and the z-loss (static in the
# unfused loss) against finite differences.

# Chunks that divide the 12 tokens and 15 classes: one compiled body per
# loop (the shorter last chunks are the reverse-mode tests' above).
PATHS = {
    "one_pass": dict(reduction="mean", chunk_size=4),
    "two_passes": dict(reduction="sum", chunk_size=(4, 5)),
    "per_token": dict(reduction="none", chunk_size=(4, 5)),
    "per_token_whole": dict(reduction="none"),
}
COTANGENT = rng.normal(size=N)
HYPERS = dict(label_smoothing=0.2, z_loss=1e-2, logit_softcap=3.0)


def path_losses(path, options="all"):
  """``(fused, unfused)``: scalar functions of ``(hidden, kernel, bias,
  logit_softcap)``, per-token losses weighed by a fixed cotangent."""
  _, kw = keywords(OPTIONS[options])
  kw.pop("logit_softcap", None)
  kw.update(PATHS[path])
  chunk_size = kw.pop("chunk_size", None)

  def scalar(fn, **extra):
    def f(h, k, b, c):
      loss = fn(h, k, LABELS, bias=b, logit_softcap=c, **kw, **extra)
      return loss if loss.ndim == 0 else jnp.vdot(COTANGENT, loss)
    return f

  return scalar(LCE, chunk_size=chunk_size), scalar(materialized)


def autodiff_modes(f, args, tangents, direction):
  """jvp, jacfwd, jacrev, hessian, grad of grad and linearize of scalar
  ``f`` at ``args``."""
  argnums = tuple(range(len(args)))
  _, linear = jax.linearize(f, *args)

  def grad_along(*a):
    return sum(jnp.vdot(g, d) for g, d in zip(
        jax.grad(f, argnums)(*a), direction))

  return dict(
      jvp=jax.jvp(f, args, tangents),
      jacfwd=jax.jacfwd(f, argnums)(*args),
      jacrev=jax.jacrev(f, argnums)(*args),
      hessian=jax.hessian(f, argnums)(*args),
      grad_of_grad=jax.grad(grad_along, argnums)(*args),
      linearize=linear(*tangents))


def random_like(args, seed):
  r = np.random.default_rng(seed)
  return tuple(jnp.asarray(r.normal(size=np.shape(a))) for a in args)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_every_autodiff_mode_matches_unfused(path):
  with jax.enable_x64(True):
    fused, unfused = path_losses(path)
    args = (jnp.asarray(HIDDEN), jnp.asarray(KERNEL), jnp.asarray(BIAS),
            jnp.asarray(3.0))
    tangents, direction = random_like(args, 1), random_like(args, 2)
    got, want = jax.jit(lambda *a: (
        autodiff_modes(fused, a, tangents, direction),
        autodiff_modes(unfused, a, tangents, direction)))(*args)
    modes_close(got, want)


def modes_close(got, want):
  """Every mode's results (a dict of pytrees) to float64 rounding."""
  for mode in want:
    for g, w in zip(jax.tree.leaves(got[mode]), jax.tree.leaves(want[mode]),
                    strict=True):
      assert g.shape == w.shape, mode
      np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11, err_msg=mode)


@pytest.mark.parametrize("path", ["one_pass", "per_token"])
def test_autodiff_modes_with_impossible_classes(path):
  """A -inf bias: hidden and kernel differentiated, the bias held."""
  with jax.enable_x64(True):
    bias, kw = keywords(OPTIONS["inf_bias"])
    kw.update(PATHS[path])
    chunk_size = kw.pop("chunk_size")

    def scalar(fn, **extra):
      def f(h, k):
        loss = fn(h, k, LABELS, bias=bias, **kw, **extra)
        return loss if loss.ndim == 0 else jnp.vdot(COTANGENT, loss)
      return f

    args = (jnp.asarray(HIDDEN), jnp.asarray(KERNEL))
    tangents, direction = random_like(args, 3), random_like(args, 4)
    got, want = jax.jit(lambda *a: (
        autodiff_modes(scalar(LCE, chunk_size=chunk_size), a, tangents,
                       direction),
        autodiff_modes(scalar(materialized), a, tangents, direction)))(*args)
    assert_finite(got)
    assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["one_pass", "two_passes", "per_token"])
def test_derivatives_numerically(path):
  """Hidden, kernel, bias and every hyperparameter, to second order, in
  forward and reverse mode, against float64 central differences along
  random directions ``v`` (and ``u`` for the second order)."""
  with jax.enable_x64(True):
    _, kw = keywords(OPTIONS["all"])
    for name in HYPERS:
      kw.pop(name, None)
    kw.update(PATHS[path])

    def f(x):
      h, k, b, eps, zeta, c = x
      loss = LCE(h, k, LABELS, bias=b, label_smoothing=eps, z_loss=zeta,
                 logit_softcap=c, **kw)
      return loss if loss.ndim == 0 else jnp.vdot(COTANGENT, loss)

    x = tuple(jnp.asarray(a) for a in (HIDDEN, KERNEL, BIAS,
                                        *HYPERS.values()))
    v, u = random_like(x, 6), random_like(x, 7)
    step = 1e-4

    def dot(a, b):
      return sum(jnp.vdot(p, q) for p, q in zip(a, b))

    def shifted(s):
      return tuple(a + s * step * d for a, d in zip(x, v))

    @jax.jit
    def checks():
      grad = jax.grad(f)
      along_u = lambda x: dot(grad(x), u)  # noqa: E731
      return dict(
          first=((f(shifted(1)) - f(shifted(-1))) / (2 * step),
                 jax.jvp(f, (x,), (v,))[1], dot(grad(x), v)),
          second=((along_u(shifted(1)) - along_u(shifted(-1))) / (2 * step),
                  dot(jax.jvp(grad, (x,), (v,))[1], u),
                  dot(jax.grad(along_u)(x), v)))

    for order, (numeric, forward, reverse) in checks().items():
      np.testing.assert_allclose(forward, numeric, rtol=1e-6, err_msg=order)
      np.testing.assert_allclose(reverse, numeric, rtol=1e-6, err_msg=order)


def test_traced_hyperparameters_under_jit_vmap_and_grad():
  h, k = (jnp.asarray(a, jnp.float32) for a in (HIDDEN, KERNEL))
  b = jnp.asarray(BIAS, jnp.float32)

  def loss(eps, zeta, c, reduction="mean"):
    return LCE(h, k, LABELS, bias=b, ignore_index=-100, label_smoothing=eps,
               z_loss=zeta, logit_softcap=c, reduction=reduction)

  values = [(0.0, 0.0, 2.0), (0.1, 1e-3, 3.0), (0.3, 0.0, 30.0),
            (1.0, 0.5, 1.0)]
  want = np.array([loss(*v) for v in values])
  eps, zeta, c = (jnp.asarray(v, jnp.float32) for v in zip(*values))
  np.testing.assert_allclose(jax.vmap(loss)(eps, zeta, c), want, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.vmap(loss))(eps, zeta, c), want,
                             rtol=1e-6)
  per_token = jax.vmap(lambda *v: loss(*v, reduction="none"))(eps, zeta, c)
  np.testing.assert_allclose(
      per_token, [loss(*v, reduction="none") for v in values], rtol=1e-6)
  # d/d(eps) of (1 - eps) CE + eps smooth is smooth - CE, wherever eps is.
  grads = jax.vmap(jax.grad(loss, argnums=(0, 1, 2)))(eps, zeta, c)
  ce = np.array([loss(0.0, z, cc) - z * 0 for _, z, cc in values])
  smooth = np.array([loss(1.0, z, cc) for _, z, cc in values])
  np.testing.assert_allclose(grads[0], smooth - ce, rtol=1e-5, atol=1e-6)
  assert_finite(grads)


def test_new_hyperparameter_values_do_not_recompile():
  h, k = (jnp.asarray(a, jnp.float32) for a in (HIDDEN, KERNEL))
  shape = (N, D + 1)   # a shape of this test's own: a fresh compile

  def call(**kw):
    return LCE(jnp.ones(shape, jnp.float32), jnp.ones((D + 1, V)), LABELS,
               ignore_index=-100, reduction="mean", **kw)

  del h, k
  before = LCE.compiled._cache_size()
  for eps in (0.1, 0.2, 0.7):
    call(label_smoothing=eps, z_loss=eps / 10, logit_softcap=10 * eps)
  assert LCE.compiled._cache_size() == before + 1
  # Zero or not is structure: one more program, without those terms.
  for _ in range(2):
    call(label_smoothing=0.0, z_loss=0, logit_softcap=None)
  assert LCE.compiled._cache_size() == before + 2


def test_zero_hyperparameters_are_left_out():
  """An exact zero compiles to the program without the term: the same
  operations (flops and bytes), whatever its keyword's other programs hold."""
  h, k = (jnp.asarray(a, jnp.float32) for a in (HIDDEN, KERNEL))

  def cost(reduction, **kw):
    step = jax.jit(jax.value_and_grad(lambda h, k: jnp.sum(LCE(
        h, k, LABELS, ignore_index=-100, reduction=reduction, **kw)),
        (0, 1))).lower(h, k).compile()
    analysis = step.cost_analysis()
    return {key: analysis[key] for key in ("flops", "transcendentals",
                                           "bytes accessed")}

  for reduction in ("mean", "none"):
    plain = cost(reduction)
    assert cost(reduction, label_smoothing=0.0, z_loss=0) == plain
    smoothed = cost(reduction, label_smoothing=0.1, z_loss=1e-4)
    assert smoothed["flops"] > plain["flops"]
    capped = cost(reduction, logit_softcap=2.0)
    assert capped["transcendentals"] > plain["transcendentals"]


def test_traced_hyperparameters_are_checked():
  h, k = (jnp.asarray(a, jnp.float32) for a in (HIDDEN, KERNEL))
  fn = "linear_softmax_cross_entropy: "

  @jaxloss.checked
  @jax.jit
  def loss(eps, zeta, c):
    return LCE(h, k, LABELS, ignore_index=-100, label_smoothing=eps,
               z_loss=zeta, logit_softcap=c)

  loss(0.5, 0.1, 2.0)
  for args, match in [
      ((1.5, 0.1, 2.0), r"label_smoothing must be in \[0, 1\]; got 1.5"),
      ((0.5, -0.1, 2.0), r"z_loss must be in \[0, inf\); got -0.1"),
      ((0.5, 0.1, 0.0), r"logit_softcap must be in \(0, inf\); got 0.0"),
      ((0.5, 0.1, np.nan), r"logit_softcap must be in \(0, inf\); got nan")]:
    with pytest.raises(jaxloss.CheckError, match=fn + match):
      loss(*(jnp.float32(a) for a in args))


@pytest.mark.parametrize("reduction,chunk_size", [
    ("mean", 64), ("mean", (128, 512)), ("none", (128, 512)),
    ("none", None)], ids=str)
def test_reverse_mode_keeps_per_token_residuals(reduction, chunk_size):
  """Temporaries of the compiled value and gradients: the chunks' logits
  and the gradients' own buffers, never the [N, V] logits (8 MiB here)."""
  n, d, v = 512, 64, 4096
  h = jax.ShapeDtypeStruct((n, d), jnp.float32)
  k = jax.ShapeDtypeStruct((d, v), jnp.float32)
  y = jax.ShapeDtypeStruct((n,), jnp.int32)

  def f(h, k, y):
    loss = LCE(h, k, y, label_smoothing=0.1, z_loss=1e-4, logit_softcap=30.0,
               reduction=reduction, chunk_size=chunk_size)
    return loss if loss.ndim == 0 else jnp.sum(loss)

  step = jax.jit(jax.value_and_grad(f, (0, 1))).lower(h, k, y).compile()
  temporaries = step.memory_analysis().temp_size_in_bytes
  chunk = (_linear._CHUNK_BYTES if chunk_size is None
           else 4 * (chunk_size if isinstance(chunk_size, int) else
                     chunk_size[0]) * (v if isinstance(chunk_size, int) else
                                       chunk_size[1]))
  # One pass over whole rows: a float32 [D, V] kernel gradient besides.
  buffers = 4 * (n * d + (d * v if isinstance(chunk_size, int) else 0))
  assert temporaries <= 3 * min(chunk, 4 * n * v) + 2 * buffers, temporaries
  if chunk_size is not None:
    assert temporaries < n * v * 4 / 2, temporaries


def _model_mesh(seed):
  """Eight devices on one "model" axis, 16 classes and a generator (or a
  skip where there are fewer devices)."""
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip("fewer than 8 devices")
  return (Mesh(np.array(devices[:8]), ("model",)), 16,
          np.random.default_rng(seed))


def _sharded_problem(r, v):
  """hidden, a [D, v] kernel and a [v] bias, float64 under enable_x64."""
  return (jnp.asarray(HIDDEN), jnp.asarray(r.normal(0, 0.7, (D, v))),
          jnp.asarray(r.normal(size=v)))


def test_vocabulary_parallel_forward_mode():
  """jvp and a Hessian-vector product (forward over reverse) inside
  jax.shard_map, the classes split over 8 devices, against the unfused loss."""
  m, v, r = _model_mesh(8)
  with jax.enable_x64(True):
    h, k, b = _sharded_problem(r, v)
    labels = np.where(LABELS >= 0, LABELS % v, LABELS)
    weight = jnp.asarray(r.uniform(0.5, 2, v))
    kw = dict(ignore_index=-100, label_smoothing=0.2, z_loss=1e-2,
              reduction="mean")

    def fused(h, k, b, c):
      return jax.shard_map(
          lambda h, k, b, w, c: LCE(h, k, labels, bias=b, weight=w,
                                    logit_softcap=c, axis_name="model", **kw),
          mesh=m, in_specs=(P(), P(None, "model"), P("model"), P("model"),
                            P()), out_specs=P())(h, k, b, weight, c)

    def unfused(h, k, b, c):
      return materialized(h, k, labels, bias=b, weight=weight,
                          logit_softcap=c, **kw)

    args = (h, k, b, jnp.asarray(2.0))
    tangents = random_like(args, 5)

    def modes(f):
      hvp = jax.jvp(jax.grad(f, (0, 1, 2, 3)), args, tangents)[1]
      return jax.jvp(f, args, tangents), hvp

    got, want = jax.jit(lambda: (modes(fused), modes(unfused)))()
    assert_close(got, want, rtol=1e-9, atol=1e-11)


# Probability labels.

SCE = jaxloss.softmax_cross_entropy
# Rows of probabilities, one all zero (it costs 0) and one that does not sum
# to 1 (torch and optax take any values in [0, 1]); no mass on the
# impossible classes of INF_BIAS.
PROBS = rng.dirichlet(np.ones(V), N)
PROBS[:, [2, 9]] = 0
PROBS[5] = 0
PROBS[6] *= 0.5


def materialized_probabilities(hidden, kernel, labels, bias=None,
                               logit_softcap=None, z_loss=0.0,
                               reduction="none", **kw):
  """The unfused loss: the logits as :func:`materialized` has them, then
  ``softmax_cross_entropy``'s reference (plain autodiff), plus the z-loss
  ``zeta (sum_j w_j y_j) lse^2`` whose label derivative is 0 on an
  impossible class."""
  x = logits(hidden, kernel, bias, logit_softcap)
  stat = x.dtype
  loss = SCE(x, labels, implementation="reference", **kw)
  where = kw.get("where")
  if not _is_zero(z_loss):
    c = labels.astype(stat)
    if kw.get("weight") is not None:
      c = c * jnp.broadcast_to(kw["weight"], c.shape)
    c = jnp.where(x > -jnp.inf, c, jax.lax.stop_gradient(c))
    lse = jax.nn.logsumexp(x, axis=-1)
    z = z_loss * jnp.sum(c, axis=-1) * lse**2
    loss = loss + (z if where is None else jnp.where(where, z, 0))
  if reduction == "none":
    return loss
  total = jnp.sum(loss)
  if reduction == "sum":
    return total
  kept = loss.size if where is None else jnp.sum(where)
  return total / jnp.maximum(kept, 1)


def _is_zero(v):
  return isinstance(v, (int, float)) and v == 0


def compare_probabilities(hidden, kernel, bias, labels, *, chunk_size=None,
                          **kw):
  """Fused and unfused: the loss, the value and gradients of its sum by
  hidden, kernel, bias (when given) and the labels."""
  def results(fn, **extra):
    def loss(h, k, b, y):
      return fn(h, k, y, bias=b, **kw, **extra)

    def total(h, k, b, y):
      return jnp.sum(loss(h, k, b, y))

    argnums = (0, 1, 3) if bias is None else (0, 1, 2, 3)
    return lambda *a: (loss(*a), jax.value_and_grad(total, argnums)(*a))

  fused = results(LCE, chunk_size=chunk_size)
  unfused = results(materialized_probabilities)
  return jax.jit(lambda *a: (fused(*a), unfused(*a)))(hidden, kernel, bias,
                                                      labels)


PROBABILITY_OPTIONS = {
    "plain": dict(),
    "all": dict(bias=True, weight=True, where=True, label_smoothing=0.2,
                z_loss=1e-2, logit_softcap=3.0),
    "inf_bias": dict(bias="inf", weight=True, where=True,
                     label_smoothing=0.3, z_loss=1e-2),
}
# The last entry: the number of batch axes (hidden [3, 4, D] for 2; the
# tokens are flattened, so token chunks of 5 still cut rows of both axes).
PROBABILITY_CASES = [
    ("all", "mean", (4, 5), 2), ("all", "sum", 5, 1),
    ("all", "none", (5, 6), 2), ("inf_bias", "mean", 4, 1),
    ("inf_bias", "none", (4, 5), 1), ("plain", "sum", None, 2),
]


@pytest.mark.parametrize("options,reduction,chunk_size,batch_axes",
                         PROBABILITY_CASES, ids=str)
def test_probability_labels_match_materialized(options, reduction,
                                               chunk_size, batch_axes):
  """Values and the gradients by hidden, kernel, bias and labels."""
  batch = (N,) if batch_axes == 1 else (3, 4)
  with jax.enable_x64(True):
    bias, kw = keywords(PROBABILITY_OPTIONS[options])
    if "where" in kw:
      kw["where"] = kw["where"].reshape(batch)
    got, want = compare_probabilities(
        jnp.asarray(HIDDEN.reshape(*batch, D)), jnp.asarray(KERNEL), bias,
        jnp.asarray(PROBS.reshape(*batch, V)), chunk_size=chunk_size,
        reduction=reduction, **kw)
    assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert_finite(got)
    if reduction == "none":
      assert got[0].shape == batch


def test_probability_labels_numpy_reference():
  """Against the float64 NumPy definition: -sum_j w_j y'_j log softmax_j,
  y' = (1 - eps) y + eps / |support| over the possible classes."""
  eps = 0.1
  with jax.enable_x64(True):
    got = LCE(HIDDEN, KERNEL, PROBS, bias=INF_BIAS, weight=WEIGHT,
              label_smoothing=eps, chunk_size=(4, 5))
  x = HIDDEN @ KERNEL + INF_BIAS
  support = np.isfinite(x)
  y = (1 - eps) * PROBS + eps * support / support.sum(-1, keepdims=True)
  log_p = np.where(support, x - ref.logsumexp(x)[:, None], 0)
  want = -np.sum(WEIGHT * y * log_p, axis=-1)
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_one_hot_probabilities_are_class_ids():
  """The same sum (the means differ: torch divides by the rows for
  probabilities, by the label weights for class ids) and gradients."""
  labels = np.where(LABELS < 0, 0, LABELS)
  one_hot = np.eye(V)[labels]
  kw = dict(bias=BIAS, weight=WEIGHT, label_smoothing=0.2, z_loss=1e-2,
            logit_softcap=3.0, reduction="sum")
  with jax.enable_x64(True):
    for chunk_size in (4,):
      grads = [jax.value_and_grad(
          lambda h, k, y: LCE(h, k, y, chunk_size=chunk_size, **kw),
          (0, 1))(HIDDEN, KERNEL, y) for y in (labels, one_hot)]
      assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-13)


def test_probability_label_gradient_at_the_edges():
  """d loss / d y_j = w_j (lse - x_j) at zero labels too, 0 on an
  impossible class without mass and in dropped rows; a row with mass on an
  impossible class costs inf."""
  where = np.ones(N, bool)
  where[3] = False
  with jax.enable_x64(True):
    dy = jax.grad(lambda y: jnp.sum(LCE(
        HIDDEN, KERNEL, y, bias=INF_BIAS, weight=WEIGHT, where=where,
        chunk_size=(4, 5))))(jnp.asarray(PROBS))
    x = HIDDEN @ KERNEL + INF_BIAS
    want = WEIGHT * (ref.logsumexp(x)[:, None] - np.where(np.isfinite(x), x,
                                                          0))
    want = np.where(np.isfinite(x) & where[:, None], want, 0)
    np.testing.assert_allclose(dy, want, rtol=1e-12)
    assert np.all(np.asarray(dy)[:, [2, 9]] == 0)
    assert np.all(np.asarray(dy)[3] == 0)
    labels = PROBS.copy()
    labels[0, 2] = 0.1
    loss = LCE(HIDDEN, KERNEL, labels, bias=INF_BIAS)
    assert loss[0] == np.inf and np.all(np.isfinite(loss[1:]))


def test_probability_labels_broadcast_along_the_batch():
  row = PROBS[0]
  with jax.enable_x64(True):
    for reduction in ("none", "mean"):
      got = LCE(HIDDEN, KERNEL, row, reduction=reduction)
      want = LCE(HIDDEN, KERNEL, np.broadcast_to(row, (N, V)),
                 reduction=reduction)
      np.testing.assert_allclose(got, want, rtol=1e-14)


def test_probability_labels_garbage_in_dropped_rows():
  """NaN labels and huge hidden states in dropped rows leave no trace."""
  where = np.ones(N, bool)
  where[[1, 3]] = False
  labels = PROBS.copy()
  labels[1] = np.nan
  h = HIDDEN.copy()
  h[3] = 1e30
  with jax.enable_x64(True):
    for reduction, chunk_size in (("none", (4, 5)), ("mean", 4)):
      loss, grads = jax.value_and_grad(
          lambda h, k, y: jnp.sum(LCE(h, k, y, where=where,
                                      label_smoothing=0.1,
                                      reduction=reduction,
                                      chunk_size=chunk_size)),
          (0, 1, 2))(h, KERNEL, labels)
      assert_finite((loss, grads))
      assert np.all(np.asarray(grads[0])[[1, 3]] == 0)
      assert np.all(np.asarray(grads[2])[[1, 3]] == 0)


def test_probability_labels_in_half_precision():
  h, k = (jnp.asarray(a, jnp.bfloat16) for a in (HIDDEN, KERNEL))
  y = jnp.asarray(PROBS, jnp.bfloat16)
  loss, grads = jax.value_and_grad(
      lambda h, k, y: LCE(h, k, y, reduction="mean", chunk_size=4),
      (0, 1, 2))(h, k, y)
  assert loss.dtype == jnp.float32
  assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
  with jax.enable_x64(True):
    want = LCE(*(np.asarray(a, np.float64) for a in (h, k, y)),
               reduction="mean")
  np.testing.assert_allclose(loss, want, rtol=1e-2)


PROBABILITY_PATHS = {
    "one_pass": dict(reduction="mean", chunk_size=4),
    "two_passes": dict(reduction="sum", chunk_size=(4, 5)),
    "per_token": dict(reduction="none", chunk_size=(4, 5)),
}


@pytest.mark.parametrize("path", PROBABILITY_PATHS)
def test_probability_labels_every_autodiff_mode(path):
  """jvp, grad and the hessian by hidden, kernel, bias, softcap and labels
  together, on a small case (5 tokens, 7 classes; chunks of 4 by 5 end on
  shorter ones): forward, reverse and forward-over-reverse."""
  n, d, v = 5, 3, 7
  r = np.random.default_rng(11)
  with jax.enable_x64(True):
    kw = dict(weight=jnp.asarray(r.uniform(0.5, 2, v)),
              where=jnp.asarray([True, True, False, True, True]),
              label_smoothing=0.2, z_loss=1e-2, **PROBABILITY_PATHS[path])
    chunk_size = kw.pop("chunk_size")

    def scalar(fn, **extra):
      def f(h, k, b, c, y):
        loss = fn(h, k, y, bias=b, logit_softcap=c, **kw, **extra)
        return loss if loss.ndim == 0 else jnp.vdot(COTANGENT[:n], loss)
      return f

    labels = r.dirichlet(np.ones(v), n)
    labels[1] *= 0.5
    args = (jnp.asarray(r.normal(size=(n, d))),
            jnp.asarray(r.normal(0, 0.7, (d, v))),
            jnp.asarray(r.normal(size=v)), jnp.asarray(3.0),
            jnp.asarray(labels))
    tangents = random_like(args, 1)
    argnums = tuple(range(len(args)))

    def modes(f):
      return dict(jvp=jax.jvp(f, args, tangents),
                  grad=jax.grad(f, argnums)(*args),
                  hessian=jax.hessian(f, argnums)(*args))

    got, want = jax.jit(lambda: (
        modes(scalar(LCE, chunk_size=chunk_size)),
        modes(scalar(materialized_probabilities))))()
    modes_close(got, want)


@pytest.mark.parametrize("reduction,chunk_size", [
    ("mean", 64), ("mean", (128, 512)), ("none", (128, 512))], ids=str)
def test_probability_labels_reverse_mode_temporaries(reduction, chunk_size):
  """The labels are an [N, V] input, sliced chunk by chunk beside the
  logits: no [N, V] temporary (8 MiB here) for the gradients of hidden and
  kernel, and one, the labels' own gradient, when they are differentiated."""
  n, d, v = 512, 64, 4096
  h = jax.ShapeDtypeStruct((n, d), jnp.float32)
  k = jax.ShapeDtypeStruct((d, v), jnp.float32)
  y = jax.ShapeDtypeStruct((n, v), jnp.float32)

  def temporaries(argnums):
    def f(h, k, y):
      loss = LCE(h, k, y, label_smoothing=0.1, z_loss=1e-4,
                 logit_softcap=30.0, reduction=reduction,
                 chunk_size=chunk_size)
      return loss if loss.ndim == 0 else jnp.sum(loss)
    step = jax.jit(jax.value_and_grad(f, argnums)).lower(h, k, y).compile()
    return step.memory_analysis().temp_size_in_bytes

  buffers = 4 * (n * d + (d * v if isinstance(chunk_size, int) else 0))
  assert temporaries((0, 1)) < n * v * 4 / 2 + 2 * buffers
  # Besides the [N, V] label gradient, an output: no second one for a
  # scalar loss. Per-token losses (JAX's transpose of the tangent's chunked
  # label reads, one accumulator per loop level) keep one more [N, V]
  # buffer: a known cost, only when the labels are differentiated.
  extra = n * v * 4 if reduction == "none" else 0
  assert temporaries((0, 1, 2)) < extra + n * v * 4 / 2 + 2 * buffers


def test_vocabulary_parallel_probability_labels():
  """The labels sharded like the kernel's columns: values and gradients of
  the unsharded loss, the labels' included."""
  m, v, r = _model_mesh(9)
  with jax.enable_x64(True):
    h, k, b = _sharded_problem(r, v)
    b = b.at[3].set(-jnp.inf)
    y = r.dirichlet(np.ones(v), N)
    y[:, 3] = 0
    y = jnp.asarray(y)
    weight = jnp.asarray(r.uniform(0.5, 2, v))
    kw = dict(label_smoothing=0.2, z_loss=1e-2, where=jnp.asarray(WHERE))

    def fused(h, k, b, y, reduction):
      return jax.shard_map(
          lambda h, k, b, w, y: LCE(h, k, y, bias=b, weight=w,
                                    axis_name="model", reduction=reduction,
                                    **kw),
          mesh=m, in_specs=(P(), P(None, "model"), P("model"), P("model"),
                            P(None, "model")),
          out_specs=P())(h, k, b, weight, y)

    def unfused(h, k, b, y, reduction):
      return materialized_probabilities(h, k, y, bias=b, weight=weight,
                                        reduction=reduction, **kw)

    def both(reduction):
      def f(fn):
        return jax.value_and_grad(
            lambda *a: jnp.sum(fn(*a, reduction)), (0, 1, 2, 3))(h, k, b, y)
      return f(fused), f(unfused)

    for reduction in ("none", "mean"):
      got, want = jax.jit(lambda r=reduction: both(r))()
      assert_close(got, want, rtol=1e-10, atol=1e-12)


# dtype=: float32 parameters, bfloat16 matmuls.

def rounded_matmul(h, k, dtype):
  """``h @ k`` read in ``dtype`` and rounded to it, in float64, with the
  rounding's derivative taken as 1 (the reference of the gradients)."""
  h, k = (a.astype(dtype).astype(jnp.float64) for a in (h, k))
  x = h @ k
  return x + jax.lax.stop_gradient(x.astype(dtype).astype(jnp.float64) - x)


def mixed_losses(reduction, chunk_size, hidden_dtype=jnp.float32, **kw):
  """``(fused, float64 reference, plain JAX)`` of ``(hidden, kernel,
  bias)``: the sum of the losses, float32 kernel and bias, bfloat16 matmuls."""
  kw = dict(ignore_index=-100, where=jnp.asarray(WHERE),
            reduction=reduction, **kw)
  c = kw.pop("logit_softcap", None)

  def cap(x):
    return x if c is None else c * jnp.tanh(x / c)

  def fused(h, k, b):
    return jnp.sum(LCE(h.astype(hidden_dtype), k, LABELS, bias=b,
                       logit_softcap=c, chunk_size=chunk_size,
                       dtype=jnp.bfloat16, **kw))

  def reference(h, k, b):
    x = rounded_matmul(h.astype(hidden_dtype), k, jnp.bfloat16) + b[None]
    return jnp.sum(CE(cap(x), LABELS, implementation="reference", **kw))

  def plain(h, k, b):
    x = h.astype(hidden_dtype).astype(jnp.bfloat16) @ k.astype(jnp.bfloat16)
    return jnp.sum(CE(cap(x.astype(jnp.float32) + b[None]), LABELS, **kw))

  return fused, reference, plain


MIXED = [("mean", 4), ("sum", (4, 5)), ("none", (4, 5)), ("mean", None)]


@pytest.mark.parametrize("reduction,chunk_size", MIXED, ids=str)
def test_computation_dtype_matches_float64_reference(reduction, chunk_size):
  fused, reference, plain = mixed_losses(reduction, chunk_size,
                                         label_smoothing=0.1, z_loss=1e-3)
  args = tuple(jnp.asarray(a, jnp.float32) for a in (HIDDEN, KERNEL, BIAS))
  got, base = jax.jit(lambda *a: tuple(
      jax.value_and_grad(f, (0, 1, 2))(*a) for f in (fused, plain)))(*args)
  with jax.enable_x64(True):
    want = jax.value_and_grad(reference, (0, 1, 2))(
        *(a.astype(jnp.float64) for a in args))
  loss, grads = got
  assert loss.dtype == jnp.float32
  assert [g.dtype for g in grads] == [jnp.float32] * 3
  np.testing.assert_allclose(loss, want[0], rtol=1e-5)
  for g, w in zip(grads, want[1]):
    # The logits' gradient is rounded to bfloat16 for the matmuls.
    np.testing.assert_allclose(g, w, atol=4e-3 * np.max(np.abs(w)))
  # The float32 kernel gradient is the float32 sum of bfloat16 products,
  # not rounded to bfloat16 as plain JAX's is, and nearer the reference.
  dk, plain_dk = grads[1], base[1][1]

  def bf16(a):
    return a.astype(jnp.bfloat16).astype(jnp.float32)

  assert np.all(bf16(plain_dk) == plain_dk)
  assert np.mean(bf16(dk) != dk) > 0.5
  want_dk = np.asarray(want[1][1])
  assert (np.linalg.norm(np.asarray(dk) - want_dk)
          < np.linalg.norm(np.asarray(plain_dk) - want_dk))


def test_computation_dtype_with_bfloat16_hidden():
  fused, reference, _ = mixed_losses("mean", 4, hidden_dtype=jnp.bfloat16)
  h = jnp.asarray(HIDDEN, jnp.bfloat16)
  k, b = (jnp.asarray(a, jnp.float32) for a in (KERNEL, BIAS))
  loss, grads = jax.value_and_grad(fused, (0, 1, 2))(h, k, b)
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.float32, jnp.float32]
  with jax.enable_x64(True):
    want = jax.value_and_grad(reference, (0, 1, 2))(
        h.astype(jnp.float64), k.astype(jnp.float64), b.astype(jnp.float64))
  np.testing.assert_allclose(loss, want[0], rtol=1e-5)
  for g, w in zip(grads, want[1]):
    np.testing.assert_allclose(np.asarray(g, np.float32), w,
                               atol=1e-2 * np.max(np.abs(w)))


@pytest.mark.slow
@pytest.mark.parametrize("reduction,chunk_size", [MIXED[0], MIXED[2]],
                         ids=str)
def test_computation_dtype_every_autodiff_mode(reduction, chunk_size):
  """Every mode in float32 with bfloat16 matmuls, against the float64
  reference of the same rounding (to bfloat16 accuracy)."""
  fused, reference, _ = mixed_losses(reduction, chunk_size,
                                     logit_softcap=3.0)
  args = tuple(jnp.asarray(a, jnp.float32) for a in (HIDDEN, KERNEL, BIAS))
  tangents, direction = random_like(args, 8), random_like(args, 9)
  f32 = lambda t: tuple(a.astype(jnp.float32) for a in t)  # noqa: E731
  got = jax.jit(lambda *a: autodiff_modes(fused, a, f32(tangents),
                                          f32(direction)))(*args)
  with jax.enable_x64(True):
    f64 = lambda t: tuple(a.astype(jnp.float64) for a in t)  # noqa: E731
    want = autodiff_modes(reference, f64(args), f64(tangents),
                          f64(direction))
  for mode in want:
    for g, w in zip(jax.tree.leaves(got[mode]), jax.tree.leaves(want[mode]),
                    strict=True):
      assert g.shape == w.shape and g.dtype == jnp.float32, mode
      np.testing.assert_allclose(g, w, atol=1e-2 * np.max(np.abs(w)),
                                 err_msg=mode)


@pytest.mark.parametrize("reduction,chunk_size", [
    ("mean", 64), ("mean", (128, 512)), ("none", (128, 512))], ids=str)
def test_computation_dtype_temporaries(reduction, chunk_size):
  """Beyond the float32 gradients, the bfloat16 copies of the operands and
  the chunks' logits: small next to the [N, V] logits plain JAX holds."""
  n, d, v = 512, 64, 4096
  h = jax.ShapeDtypeStruct((n, d), jnp.float32)
  k = jax.ShapeDtypeStruct((d, v), jnp.float32)
  y = jax.ShapeDtypeStruct((n,), jnp.int32)

  def temporaries(f):
    step = jax.jit(jax.value_and_grad(lambda h, k, y: jnp.sum(f(h, k, y)),
                                      (0, 1))).lower(h, k, y).compile()
    return step.memory_analysis().temp_size_in_bytes

  fused = temporaries(lambda h, k, y: LCE(
      h, k, y, reduction=reduction, chunk_size=chunk_size,
      dtype=jnp.bfloat16))
  plain = temporaries(lambda h, k, y: CE(
      (h.astype(jnp.bfloat16) @ k.astype(jnp.bfloat16)).astype(jnp.float32),
      y, reduction=reduction))
  # A one-pass chunk holds a float32 [D, V] kernel gradient (1 MiB here).
  gradients = 4 * (n * d + (d * v if isinstance(chunk_size, int) else 0))
  assert fused - gradients < n * v * 4 / 4, fused
  assert plain > n * v * 4, plain


def test_value_holds_one_chunk_of_logits():
  # The statistics take the label's logit by a gather: a select of its
  # column summed over the chunk was written out beside the logits (twice
  # the plain loss's temporaries). Compiled, not run.
  n, d, v = 2048, 64, 1024
  h = jax.ShapeDtypeStruct((n, d), jnp.float32)
  k = jax.ShapeDtypeStruct((d, v), jnp.float32)
  y = jax.ShapeDtypeStruct((n,), jnp.int32)
  value = jax.jit(lambda h, k, y: jnp.mean(LCE(h, k, y))).lower(
      h, k, y).compile()
  assert value.memory_analysis().temp_size_in_bytes < 1.5 * n * v * 4
