import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxloss
from derivatives import check_derivatives
from helpers import FLOATS, MODES, assert_finite, dtype_context, rounded, run

rng = np.random.default_rng(5)
B, T, K, N = 4, 9, 5, 4
LOGITS = rng.normal(0, 2, (B, T, K))
FRAME_PAD = np.zeros((B, T))
FRAME_PAD[1, 6:] = 1.0
FRAME_PAD[3, 4:] = 1.0
LABELS = rng.integers(1, K, (B, N))
LABELS[0, :2] = [2, 2]                            # a repeat: needs a blank
LABEL_PAD = np.zeros((B, N))
LABEL_PAD[1, 3:] = 1.0
LABEL_PAD[2, :] = 1.0                             # no label at all
LABEL_PAD[3, 2:] = 1.0
ARGS = (LOGITS, FRAME_PAD, LABELS, LABEL_PAD)


def log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def logsumexp(values):
  values = np.asarray(values, np.float64)
  m = values.max()
  if m == -np.inf:
    return -np.inf
  return m + np.log(np.exp(values - m).sum())


def ctc_reference(logits, frame_pad, labels, label_pad, blank=0):
  """Float64 CTC by the textbook recursion over blank-extended labels."""
  out = []
  for b in range(len(logits)):
    lp = log_softmax(logits[b])[np.asarray(frame_pad[b]) == 0]
    ext = [blank]
    for label in np.asarray(labels[b])[np.asarray(label_pad[b]) == 0]:
      ext += [int(label), blank]
    alpha = np.full(len(ext), -np.inf)
    alpha[0] = 0.0        # a virtual start in the first blank state
    prev = np.full(len(ext), -np.inf)
    for t in range(len(lp)):
      prev, alpha = alpha, np.full(len(ext), -np.inf)
      for s, c in enumerate(ext):
        terms = [prev[s]] + ([prev[s - 1]] if s >= 1 else [])
        if s >= 2 and c != blank and ext[s - 2] != c:
          terms.append(prev[s - 2])
        if t == 0:
          terms = [0.0] if s == 0 else ([0.0] if s == 1 else [-np.inf])
        alpha[s] = logsumexp(terms) + lp[t, c]
    out.append(-logsumexp(alpha[-2:] if len(ext) > 1 else alpha[-1:]))
  return np.array(out)


def ctc_brute_force(logits, labels, blank=0):
  """-log of the summed probability of every alignment, for tiny inputs."""
  lp = log_softmax(logits)
  total = []
  for path in itertools.product(range(lp.shape[1]), repeat=lp.shape[0]):
    merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
    if [c for c in merged if c != blank] == list(labels):
      total.append(sum(lp[t, c] for t, c in enumerate(path)))
  return -logsumexp(total) if total else np.inf


def test_reference_is_brute_force():
  x = rng.normal(0, 1, (5, 3))
  for labels in ([1, 2], [1, 1], [2], []):
    got = ctc_reference(x[None], np.zeros((1, 5)), np.array([labels + [0]]),
                        np.array([[0.0] * len(labels) + [1.0]]))
    np.testing.assert_allclose(got, [ctc_brute_force(x, labels)], rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_reference(mode):
  # Eager runs the scan step by step: a short input keeps it quick.
  args = (LOGITS[:, :7], FRAME_PAD[:, :7], LABELS, LABEL_PAD)
  with jax.enable_x64(True):
    got = run(mode, jaxloss.ctc_loss, *args)
  np.testing.assert_allclose(got, ctc_reference(*args), rtol=1e-12)


@functools.cache
def _value_and_grad_fn(fn):
  def total(x, *args, **kwargs):
    out = fn(x, *args, **kwargs)
    loss = out[0] if isinstance(out, tuple) else out
    return loss.sum(), out
  return jax.jit(jax.value_and_grad(total, has_aux=True))


def _value_and_grad(fn, x, *args, log_epsilon=-1e5):
  """``fn``'s outputs and the gradient of its summed loss, in one compile.

  Arguments are traced (``log_epsilon`` included), so the tests below share
  compilations by sharing shapes.
  """
  (_, out), grad = _value_and_grad_fn(fn)(x, *args, log_epsilon=log_epsilon)
  return out, grad


@pytest.mark.slow  # Over 15 s on 2 shared cores.
def test_equals_optax_values_forward_probs_and_gradients():
  x = jnp.asarray(LOGITS, jnp.float32)
  ours, g = _value_and_grad(jaxloss.ctc_loss_with_forward_probs, x,
                            *ARGS[1:])
  theirs, g_optax = _value_and_grad(
      optax.losses.ctc_loss_with_forward_probs, x, *ARGS[1:])
  for a, b in zip(ours, theirs):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_allclose(jaxloss.ctc_loss(x, *ARGS[1:]), theirs[0],
                             rtol=1e-6)
  np.testing.assert_allclose(g, g_optax, rtol=1e-5, atol=1e-6)


def test_the_recursion_stays_one_loop():
  # The loss's body traces with jax.numpy's jit wrappers inlined
  # (jaxloss._jit.inlined), under which lax.scan would unroll its frames.
  x = jnp.asarray(LOGITS, jnp.float32)
  jaxpr = jax.make_jaxpr(jax.grad(lambda x: jaxloss.ctc_loss(
      x, *ARGS[1:]).sum()))(x)
  assert "scan" in str(jaxpr)
  assert len(str(jaxpr)) < 40_000


def _confident(labels):
  """optax issue 1771 in ARGS' shapes: 2 frames, each 17 nats surer of the
  label in column 0 than of the blank (the other classes are out at -1e4).
  """
  x = np.full((B, T, K), -1e4)
  x[..., 0] = 0.0
  x[np.arange(B), :2, labels[:, 0]] = 17.0
  frame_pad = np.zeros((B, T))
  frame_pad[:, 2:] = 1.0
  label_pad = np.ones((B, N))
  label_pad[:, 0] = 0.0
  return jnp.asarray(x, jnp.float32), frame_pad, labels, label_pad


def test_never_negative_where_optax_is():
  # log_softmax rounds p(label) = 1 - 4e-8 up to 1 in float32 while the blank
  # keeps its 4e-8: the three alignments (l l, _ l, l _) sum to 1 + 8e-8, a
  # positive log-likelihood, and optax's loss goes below 0.
  labels = np.array([[1, 2, 0, 0], [3, 3, 0, 0], [4, 1, 0, 0], [2, 4, 4, 0]])
  args = _confident(labels)
  ours, g = _value_and_grad(jaxloss.ctc_loss_with_forward_probs, *args)
  theirs, g_optax = _value_and_grad(optax.losses.ctc_loss_with_forward_probs,
                                    *args)
  assert (theirs[0] < 0).any()
  loss, alpha_blank, alpha_label = ours
  assert (loss >= 0).all() and not np.signbit(loss).any()  # +0, never -0
  np.testing.assert_allclose(loss, theirs[0], atol=1e-6)
  assert (alpha_blank <= 0).all() and (alpha_label <= 0).all()
  # The clamp hides rounding only: the gradient is optax's.
  np.testing.assert_allclose(g, g_optax, rtol=1e-6, atol=1e-12)
  assert_finite(g)


def test_never_negative_on_confident_batches():
  for seed in range(8):
    labels = np.random.default_rng(seed).integers(1, K, (B, N))
    x, frame_pad, labels, label_pad = _confident(labels)
    x = x + jnp.asarray(rng.normal(0, 1.0, x.shape), jnp.float32)
    (loss, alpha_blank, alpha_label), _ = _value_and_grad(
        jaxloss.ctc_loss_with_forward_probs, x, frame_pad, labels, label_pad)
    assert (loss >= 0).all()
    assert (alpha_blank <= 0).all() and (alpha_label <= 0).all()


@pytest.mark.slow  # Over 15 s on 2 shared cores.
def test_minus_inf_logits_keep_finite_gradients():
  # A class that is impossible at some frames, not needed by the labels.
  x = jnp.asarray(LOGITS, jnp.float32).at[:, ::2, K - 1].set(-jnp.inf)
  labels = np.where(LABELS == K - 1, 1, LABELS)
  loss, g = _value_and_grad(jaxloss.ctc_loss, x, FRAME_PAD, labels, LABEL_PAD)
  np.testing.assert_allclose(
      loss, ctc_reference(np.asarray(x), FRAME_PAD, labels, LABEL_PAD),
      rtol=1e-5)
  assert_finite(g)
  np.testing.assert_array_equal(g[:, ::2, K - 1], 0.0)
  assert np.isnan(optax.losses.ctc_loss(x, FRAME_PAD, labels, LABEL_PAD)).all()


def test_padded_frames_do_not_matter():
  clean = jnp.asarray(LOGITS, jnp.float32)
  dirty = clean.at[1, 6:].set(jnp.nan).at[3, 4:, 0].set(jnp.inf)
  loss, g = _value_and_grad(jaxloss.ctc_loss, dirty, *ARGS[1:])
  loss_clean, g_clean = _value_and_grad(jaxloss.ctc_loss, clean, *ARGS[1:])
  np.testing.assert_array_equal(loss, loss_clean)
  np.testing.assert_array_equal(g, g_clean)
  np.testing.assert_array_equal(g[1, 6:], 0.0)


def test_exact_log_zero_makes_impossible_targets_infinite():
  # Row 0 keeps 2 frames for 2, 2, which needs 2, blank, 2.
  frame_pad = FRAME_PAD.copy()
  frame_pad[0, 2:] = 1.0
  labels = LABELS.copy()
  labels[0, :2] = 2
  label_pad = LABEL_PAD.copy()
  label_pad[0, 2:] = 1.0
  x = jnp.asarray(LOGITS, jnp.float32)
  args = (frame_pad, labels, label_pad)
  loss, g = _value_and_grad(jaxloss.ctc_loss, x, *args, log_epsilon=-jnp.inf)
  assert loss[0] == np.inf
  np.testing.assert_allclose(loss[1:], ctc_reference(x, *args)[1:],
                             rtol=1e-5)
  np.testing.assert_array_equal(g[0], 0.0)
  assert_finite(g)
  # optax's default log(0) = -1e5 prices the impossible at about 1e5.
  approx, _ = _value_and_grad(jaxloss.ctc_loss, x, *args)
  assert 9e4 < approx[0] < np.inf
  np.testing.assert_allclose(approx[1:], loss[1:], rtol=1e-6)


def test_exact_log_zero_equals_default_on_feasible_input():
  x = jnp.asarray(LOGITS, jnp.float32)
  a, g = _value_and_grad(jaxloss.ctc_loss_with_forward_probs, x, *ARGS[1:])
  b, g_exact = _value_and_grad(jaxloss.ctc_loss_with_forward_probs, x,
                               *ARGS[1:], log_epsilon=-jnp.inf)
  np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
  np.testing.assert_allclose(g, g_exact, rtol=1e-5, atol=1e-7)


def test_label_out_of_range_is_nan_unless_padding():
  labels = LABELS.copy()
  labels[1, 3] = 99          # padding: ignored
  labels[2, 0] = -1          # padding: ignored
  labels[0, 1] = K           # a real label: no such class
  loss = jaxloss.ctc_loss(LOGITS, FRAME_PAD, labels, LABEL_PAD)
  assert np.isnan(loss[0])
  np.testing.assert_allclose(loss[1:], jaxloss.ctc_loss(*ARGS)[1:],
                             rtol=1e-6)


def test_no_labels_at_all():
  x = jnp.asarray(LOGITS[:, :3])
  loss = jaxloss.ctc_loss(x, jnp.zeros((B, 3)), jnp.zeros((B, 0), int),
                          jnp.zeros((B, 0)))
  want = -log_softmax(x)[..., 0].sum(-1)
  np.testing.assert_allclose(loss, want, rtol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_dtypes(dtype):
  with dtype_context(dtype):
    x = jnp.asarray(LOGITS, dtype)
    loss, g = _value_and_grad(jaxloss.ctc_loss, x, *ARGS[1:])
    assert loss.dtype == (jnp.float64 if dtype == "float64" else jnp.float32)
    want = ctc_reference(rounded(LOGITS, dtype), *ARGS[1:])
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert g.dtype == x.dtype
    assert_finite(g)


def test_vmap_matches_batch():
  stacked = [np.stack([a, a[::-1]]) for a in ARGS]
  got = jax.vmap(jaxloss.ctc_loss)(*stacked)
  want = jnp.stack([jaxloss.ctc_loss(*ARGS),
                    jaxloss.ctc_loss(*[a[::-1] for a in ARGS])])
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_gradients_match_finite_differences():
  x = LOGITS[:2, :5, :3]
  labels = np.array([[1, 2], [2, 2]])
  pads = (np.array([[0.0] * 5, [0.0] * 4 + [1.0]]), labels,
          np.array([[0.0, 0.0], [0.0, 0.0]]))
  with jax.enable_x64(True):
    check_grads(lambda x: jaxloss.ctc_loss(x, *pads, reduction="sum"),
                (jnp.asarray(x),), order=1, modes=("rev",))


@pytest.mark.parametrize("kwargs,error,match", [
    ({"logits": LOGITS[0]}, ValueError,
     r"ctc_loss: logits must have shape \(batch, time, classes\)"),
    ({"logits": LOGITS.astype(int)}, TypeError,
     "ctc_loss: logits must have a floating dtype"),
    ({"logits": LOGITS[:, :0]}, ValueError,
     "ctc_loss: logits must have at least one time step"),
    ({"logit_paddings": FRAME_PAD[:, :3]}, ValueError,
     r"ctc_loss: logit_paddings shape \(4, 3\) does not broadcast to the "
     r"\(batch, time\) shape of logits \(4, 9\)"),
    ({"logit_paddings": FRAME_PAD[..., None]}, ValueError,
     r"ctc_loss: logit_paddings shape \(4, 9, 1\) does not broadcast to the "
     r"\(batch, time\) shape of logits \(4, 9\)"),
    ({"labels": LABELS.astype(float)}, TypeError,
     "ctc_loss: labels must have an integer dtype"),
    ({"labels": LABELS[:2]}, ValueError,
     r"ctc_loss: labels shape \(2, 4\) does not match logits shape "
     r"\(4, 9, 5\): labels must be \(batch, max_label_length\) with the "
     r"batch size 4 of logits"),
    ({"labels": LABELS[0]}, ValueError,
     r"ctc_loss: labels shape \(4,\) does not match logits shape"),
    ({"label_paddings": LABEL_PAD[:, :2]}, ValueError,
     r"ctc_loss: label_paddings shape \(4, 2\) does not broadcast to "
     r"labels shape \(4, 4\)"),
    ({"blank_id": K}, ValueError,
     r"ctc_loss: blank_id must be an int in \[0, 5\)"),
    ({"log_epsilon": jnp.zeros(2)}, ValueError,
     r"ctc_loss: log_epsilon must be a scalar, got shape \(2,\)"),
    ({"log_epsilon": 1.0}, ValueError,
     r"ctc_loss: log_epsilon must be in \[-inf, 0\], got 1.0"),
    ({"log_epsilon": float("nan")}, ValueError,
     r"ctc_loss: log_epsilon must be in \[-inf, 0\], got nan"),
    ({"blank_id": jnp.asarray(0)}, TypeError,
     r"ctc_loss: blank_id must be a Python int, fixed when the function is "
     r"traced"),
    ({"reduction": "batchmean"}, ValueError,
     "ctc_loss: reduction must be one of 'none', 'mean', 'sum'"),
])
def test_errors(kwargs, error, match):
  args = dict(zip(("logits", "logit_paddings", "labels", "label_paddings"),
                  ARGS))
  args.update(kwargs)
  with pytest.raises(error, match=match):
    jaxloss.ctc_loss(**args)


def test_log_epsilon_is_a_hyperparameter():
  """Traced or concrete, one compile, checked, and differentiable: with a
  log_epsilon near 0 the impossible transitions carry weight."""
  args = (LOGITS[:2, :5, :3], FRAME_PAD[:2, :5],
          np.array([[1, 1], [2, 1]]), np.zeros((2, 2)))
  f = functools.partial(jaxloss.ctc_loss, *args)
  values = (-1e5, -2.0, -0.5)
  concrete = [f(log_epsilon=v) for v in values[:2]]
  size = jaxloss.ctc_loss.compiled._cache_size()
  concrete.append(f(log_epsilon=values[2]))
  assert jaxloss.ctc_loss.compiled._cache_size() == size
  traced = jax.jit(jax.vmap(lambda e: f(log_epsilon=e)))(jnp.asarray(values))
  np.testing.assert_allclose(traced, concrete, rtol=1e-6)
  # log_epsilon = -1e5 stands for log 0: the exact value.
  np.testing.assert_allclose(concrete[0], ctc_reference(*args), rtol=1e-5)
  with pytest.raises(jaxloss.CheckError, match=(
      r"ctc_loss: log_epsilon must be in \[-inf, 0\]; got 0.5")):
    jaxloss.checked(jax.jit(lambda e: f(log_epsilon=e)))(jnp.float32(0.5))
  with jax.enable_x64(True):
    args64 = (jnp.asarray(args[0]),) + args[1:]

    def loss(e):
      return jaxloss.ctc_loss(*args64, log_epsilon=e, reduction="sum")

    grad = jax.jit(jax.grad(loss))(-1.5)
    eps = 1e-6
    assert abs(grad) > 1e-3
    np.testing.assert_allclose(grad, (loss(-1.5 + eps) - loss(-1.5 - eps))
                               / (2 * eps), rtol=1e-6)


def test_forward_and_second_order_derivatives():
  """jvp and Hessian-vector products (forward over reverse, and reverse over
  reverse), with log_epsilon = -inf and an impossible label sequence (1, 1
  in one frame: inf, with zero derivatives of every order)."""
  frame_pad = np.array([[0.0] * 5, [0.0] * 4 + [1.0], [0.0] + [1.0] * 4])
  labels, label_pad = np.array([[1, 2], [2, 2], [1, 1]]), np.zeros((3, 2))

  def total(x):
    loss = jaxloss.ctc_loss(x, frame_pad, labels, label_pad,
                            log_epsilon=-jnp.inf)
    return jnp.sum(jnp.where(jnp.isinf(loss), 0, loss))

  with jax.enable_x64(True):
    x = jnp.asarray(LOGITS[:3, :5, :3])
    assert jaxloss.ctc_loss(x, frame_pad, labels, label_pad,
                            log_epsilon=-jnp.inf)[2] == np.inf
    check_derivatives(total, (x,), directions=1)


def test_empty_batch():
  args = (jnp.zeros((0, T, K)), jnp.zeros((0, T)), jnp.zeros((0, N), int),
          jnp.zeros((0, N)))
  assert jaxloss.ctc_loss(*args).shape == (0,)
  loss, alpha_blank, alpha_label = jaxloss.ctc_loss_with_forward_probs(*args)
  assert loss.shape == (0,) and alpha_blank.shape == (T, 0, N + 1)
  for reduction in ("mean", "sum"):
    value, grad = jax.value_and_grad(lambda x, r=reduction: jaxloss.ctc_loss(
        x, *args[1:], reduction=r))(args[0])
    assert value == 0 and grad.shape == (0, T, K)


def test_loss_alone_keeps_no_forward_probabilities_of_every_frame():
  # ctc_loss needs the last frame's; a [T, B, N + 1] stack of them would be
  # written frame by frame and dropped.
  b, t, k, n = 3, 11, 5, 4
  args = (jnp.asarray(np.random.default_rng(0).normal(size=(b, t, k)),
                      jnp.float32), jnp.zeros((b, t)),
          jnp.ones((b, n), jnp.int32), jnp.zeros((b, n)))
  stacked = f"f32[{t},{b},{n + 1}]"
  for fn, kept in ((jaxloss.ctc_loss, False),
                   (lambda *a: jaxloss.ctc_loss_with_forward_probs(*a)[1],
                    True)):
    text = jax.jit(fn).lower(*args).compile().as_text()
    assert (stacked in text) == kept
  np.testing.assert_array_equal(
      jax.jit(jaxloss.ctc_loss)(*args),
      jax.jit(jaxloss.ctc_loss_with_forward_probs)(*args)[0])


def test_padded_frames_keep_the_state_in_value_and_derivatives():
  # The value's max form and the select agree on -inf and NaN states, and
  # the derivatives are the select's (the flags pick whole tangents).
  from jaxloss._ctc import _padded
  pad = jnp.array([True, False, True, False])
  state = jnp.array([[0.0, -jnp.inf], [-1.0, -jnp.inf], [jnp.nan, -2.0],
                     [-3.0, -4.0]])
  step = jnp.array([[-5.0, -6.0], [-jnp.inf, -7.0], [-8.0, -9.0],
                    [jnp.nan, -jnp.inf]])
  expected = jnp.where(pad[:, None], state, step)
  np.testing.assert_array_equal(jax.jit(_padded)(pad, state, step), expected)
  ones, twos = jnp.ones_like(state), 2 * jnp.ones_like(step)
  out, tangent = jax.jit(lambda s, t: jax.jvp(
      lambda s, t: _padded(pad, s, t), (s, t), (ones, twos)))(state, step)
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(
      tangent, jnp.broadcast_to(jnp.where(pad[:, None], 1.0, 2.0), step.shape))
