import jax
import jax.numpy as jnp
import numpy as np
import pytest
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
  inputs' dtype as XLA gives it), then the CE in float32 (float64)."""
  compute = jnp.result_type(hidden, kernel)
  stat = jnp.promote_types(compute, jnp.float32)
  x = jnp.dot(hidden, kernel, preferred_element_type=stat).astype(compute)
  x = x.astype(stat)
  if bias is not None:
    x = x + jnp.broadcast_to(bias.astype(stat), x.shape)
  if logit_softcap is not None:
    x = logit_softcap * jnp.tanh(x / logit_softcap)
  return CE(x, labels, **kw)


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
     r"labels shape \(5,\) does not match the batch shape \(12,\) of hidden"),
    (dict(labels=LABELS.astype(np.float32)), TypeError,
     "labels must have an integer dtype"),
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
])
def test_errors(kw, error, match):
  with pytest.raises(error, match="linear_softmax_cross_entropy: " + match):
    _call(**kw)
