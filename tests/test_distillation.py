"""linear_distillation_loss against the materialized logits, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss import _linear
from helpers import count_equations
from helpers import equations

LOSS = jaxloss.linear_distillation_loss
BATCH, D, D_T, V = (2, 3), 4, 5, 7
# Both sides impossible at class 0; then each divergence's own edge: a
# teacher probability of exactly 0 (forward KL), a student one (reverse KL),
# one of each (JSD).
EDGES = {"forward_kl": ((), (1,)), "reverse_kl": ((1,), ()),
         "jsd": ((2,), (1,))}


def _inputs(divergence, seed=0):
  rng = np.random.default_rng(seed)
  student_only, teacher_only = EDGES[divergence]
  b_s, b_t = rng.normal(size=V), rng.normal(size=V)
  b_s[[0, *student_only]] = -np.inf
  b_t[[0, *teacher_only]] = -np.inf
  where = np.ones(BATCH, bool)
  where[1, 0] = False
  return dict(
      student_hidden=rng.normal(size=(*BATCH, D)),
      student_kernel=rng.normal(size=(D, V)),
      teacher_hidden=rng.normal(size=(*BATCH, D_T)),
      teacher_kernel=rng.normal(size=(D_T, V)), student_bias=b_s,
      teacher_bias=b_t, where=where)


def _log_softmax(h, w, b, temperature):
  # An impossible class's -inf added outside the division: its derivative in
  # the temperature is 0, not inf * 0.
  finite = jnp.where(jnp.isinf(b), 0, b)[None, None]
  impossible = jnp.where(jnp.isinf(b), -jnp.inf, 0)[None, None]
  x = (h @ w + finite) / temperature + impossible
  return jax.nn.log_softmax(x)


def _materialized(divergence, student_hidden, student_kernel, teacher_hidden,
                  teacher_kernel, student_bias, teacher_bias, where, *,
                  temperature, beta, reduction):
  """The plain loss: both [..., V] logits, the sums over the classes where
  the terms are nonzero (the impossible ones left out, by index)."""
  stop = jax.lax.stop_gradient
  log_q = _log_softmax(student_hidden, student_kernel, student_bias,
                       temperature)
  log_p = _log_softmax(stop(teacher_hidden), stop(teacher_kernel),
                       stop(teacher_bias), temperature)
  student_only, teacher_only = EDGES[divergence]
  if divergence == "forward_kl":
    cols = [j for j in range(V) if j not in (0, *teacher_only)]
    lp, lq = log_p[..., cols], log_q[..., cols]
    loss = jnp.sum(jnp.exp(lp) * (lp - lq), -1)
  elif divergence == "reverse_kl":
    cols = [j for j in range(V) if j not in (0, *student_only)]
    lp, lq = log_p[..., cols], log_q[..., cols]
    loss = jnp.sum(jnp.exp(lq) * (lq - lp), -1)
  else:
    cols = list(range(1, V))
    lp, lq = log_p[..., cols], log_q[..., cols]
    p, q = jnp.exp(lp), jnp.exp(lq)
    log_m = jnp.log(beta * p + (1 - beta) * q)
    p_cols = [i for i, j in enumerate(cols) if j not in teacher_only]
    q_cols = [i for i, j in enumerate(cols) if j not in student_only]
    def relative(a, log_a, cols):
      return jnp.sum(a[..., cols] * (log_a[..., cols] - log_m[..., cols]), -1)
    loss = (beta * relative(p, lp, p_cols)
            + (1 - beta) * relative(q, lq, q_cols))
  loss = jnp.where(where, loss, 0)
  if reduction == "none":
    return loss
  if reduction == "sum":
    return jnp.sum(loss)
  return jnp.sum(loss) / jnp.maximum(jnp.sum(where), 1)


def _close(got, want, what, rtol=1e-9, atol=1e-12):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol,
                               atol=atol, err_msg=what)


@pytest.mark.parametrize("chunk_size", [(4, 3), (4, V)])
@pytest.mark.parametrize("divergence", sorted(EDGES))
def test_values_and_gradients_match_the_materialized_loss(divergence,
                                                           chunk_size):
  # Chunks of 4 tokens by 3 classes: 6 tokens and 7 classes in uneven
  # pieces, two batch axes, a dropped token, -inf biases; or chunks of
  # whole rows, which take their log-sum-exps from their own logits (no
  # pass of statistics). The values per
  # token and their mean ("sum" is the sum of "none": test_properties.py);
  # the mean's gradients, in the temperature and beta too, also against
  # central differences.
  with jax.enable_x64(True):
    args = {k: jnp.asarray(v) for k, v in _inputs(divergence).items()}
    names = ("student_hidden", "student_kernel", "student_bias",
             "teacher_hidden", "teacher_kernel", "teacher_bias")
    temperature, beta, step = 1.3, 0.3, 1e-6
    shifts = np.array([[step, 0], [-step, 0], [0, step], [0, -step]])
    hypers = jnp.asarray(np.array([temperature, beta]) + shifts)

    def both(f):
      def at(reduction, diff, temperature, beta):
        return f(**{**args, **dict(zip(names, diff))},
                 temperature=temperature, beta=beta, reduction=reduction)
      diff = tuple(args[k] for k in names)
      return ({r: at(r, diff, temperature, beta) for r in ("none", "mean")},
              jax.grad(at, argnums=(1, 2, 3))("mean", diff, temperature,
                                              beta),
              jax.vmap(lambda h: at("mean", diff, *h))(hypers))

    fused = jax.jit(lambda: both(lambda **kw: LOSS(
        divergence=divergence, chunk_size=chunk_size, **kw)))()
    plain = jax.jit(lambda: both(lambda **kw: _materialized(
        divergence, **kw)))()
    values, (grads, d_temperature, d_beta), shifted = fused
    want_values, (want_grads, want_t, want_beta), _ = plain
    assert values["none"].shape == BATCH and values["none"][1, 0] == 0
    assert np.all(np.isfinite(np.asarray(values["none"])))
    _close(values, want_values, "values")
    _close(grads[:3], want_grads[:3], "student gradients")
    for g in grads[3:]:
      np.testing.assert_array_equal(g, 0)
    _close((d_temperature, d_beta), (want_t, want_beta), "d/dT, d/dbeta")
    numeric = (shifted[::2] - shifted[1::2]) / (2 * step)
    np.testing.assert_allclose((d_temperature, d_beta), numeric, rtol=1e-6,
                               atol=1e-9)
    # Impossible classes and dropped tokens: zero gradient.
    np.testing.assert_array_equal(grads[1][:, 0], 0)
    np.testing.assert_array_equal(grads[2][0], 0)
    np.testing.assert_array_equal(grads[0][1, 0], 0)


@pytest.mark.parametrize("chunk_size", [(3, 4), (3, V)])
def test_forward_and_second_order_modes(chunk_size):
  # jvp by the student's hidden states, kernel and bias, the temperature
  # and beta, and the Hessian in the bias (forward over reverse), against
  # the materialized loss's: the JSD, whose terms read everything; chunks
  # of classes, or of whole rows. (The catalogue-wide tests run every mode
  # on the forward KL.)
  with jax.enable_x64(True):
    args = {k: jnp.asarray(v) for k, v in _inputs("jsd", seed=2).items()}
    rng = np.random.default_rng(3)
    x = (args["student_hidden"], args["student_kernel"],
         args["student_bias"], jnp.asarray(0.8), jnp.asarray(0.4))
    t = tuple(jnp.asarray(rng.normal(size=np.shape(a))) for a in x)

    def modes(f):
      def g(h, w, b, temperature, beta):
        return f(**{**args, "student_hidden": h, "student_kernel": w,
                    "student_bias": b}, temperature=temperature, beta=beta,
                 reduction="sum")
      return {"jvp": jax.jvp(g, x, t)[1],
              "hessian": jax.hessian(lambda b: g(x[0], x[1], b, *x[3:]))(
                  x[2])[1:, 1:]}

    fused = jax.jit(lambda: modes(lambda **kw: LOSS(
        divergence="jsd", chunk_size=chunk_size, **kw)))()
    plain = jax.jit(lambda: modes(lambda **kw: _materialized(
        "jsd", **kw)))()
    _close(fused, plain, "jvp, hessian", rtol=1e-8,
           atol=1e-10)


def _matmuls(fn, *args):
  return count_equations(jax.make_jaxpr(fn)(*args).jaxpr, "dot_general")


def test_whole_rows_need_no_pass_of_statistics():
  # Default chunks: 64 tokens of 256 classes fit whole, so each side's
  # logits are computed once for the value, not once for the log-sum-exps
  # and again for the divergence. The mean's value and gradient take one
  # pass too: both sides' logits and the two gradient matmuls, where chunks
  # of 128 classes take the statistics' pass (two), the loss's (two), and
  # the logits again with the gradients' (four). "none" keeps the
  # per-token tangent, which takes its logits again for the gradients.
  n, d, v = 64, 8, 256
  k = jax.random.split(jax.random.key(1), 4)
  h, h_t = (jax.random.normal(i, (n, d)) for i in k[:2])
  w, w_t = (jax.random.normal(i, (d, v)) for i in k[2:])

  def counts(**kw):
    def loss(h, w):
      return jnp.sum(LOSS(h, w, h_t, w_t, **kw))
    return _matmuls(loss, h, w), _matmuls(jax.value_and_grad(loss, (0, 1)),
                                          h, w)

  (value, grad), (chunked_value, chunked_grad) = counts(), counts(
      chunk_size=(n, v // 2))
  assert (value, grad) == (2, 4) and (chunked_value, chunked_grad) == (4, 8)
  per_token = counts(reduction="none")
  assert per_token == (2, 6), per_token
  np.testing.assert_allclose(LOSS(h, w, h_t, w_t), LOSS(
      h, w, h_t, w_t, chunk_size=(n, v // 2)), rtol=1e-6)


@pytest.mark.parametrize("n, v, share", [(4096, 1024, 8), (1024, 32768, 2)])
def test_default_value_chunks_keep_enough_tokens(n, v, share):
  # The value's default chunk of whole rows gives each of its arrays an
  # eighth of the cross entropy's budget (1024 tokens of 1024 classes on
  # CPUs), or a half, both sides' logits alone, where an eighth holds
  # fewer than 128 tokens (128 tokens of 32768 classes, not 32): each chunk
  # reads both kernels, and at 32 tokens the value took twice the plain
  # formula's time on CPUs. Traced, never run.
  if jax.default_backend() != "cpu":
    pytest.skip("accelerators take whole rows from 2048 tokens only")
  d = 8
  shape = jax.ShapeDtypeStruct
  args = (shape((n, d), jnp.float32), shape((d, v), jnp.float32),
          shape((n, 2 * d), jnp.float32), shape((2 * d, v), jnp.float32))
  rows = min(n, _linear._CHUNK_BYTES // (share * 4 * v))
  for divergence in ("forward_kl", "jsd"):
    jaxpr = jax.make_jaxpr(lambda *a: LOSS(*a, divergence=divergence))(
        *args)
    out = [e.outvars[0].aval.shape for e in equations(jaxpr.jaxpr)
           if e.primitive.name == "dot_general"]
    assert out == [(rows, v)] * 2, (divergence, out)


@pytest.mark.parametrize("divergence, v, rows", [
    ("forward_kl", 1024, 4096), ("jsd", 1024, 1024),
    ("forward_kl", 16384, 512), ("jsd", 16384, 128),
    ("forward_kl", 262144, None)])
def test_default_gradient_chunks(divergence, v, rows):
  # The mean's value and gradient take chunks of whole rows: for the KL
  # divergences the cross entropy's (0.76x the plain formula's time at 256
  # tokens of 32768 classes on CPUs, 0.93x at 128), for the JSD, whose
  # chunks hold more arrays, an eighth of its budget per array, or 128
  # tokens where an eighth holds fewer (64 of 16384 classes) and the half
  # holds them: at 32 tokens of 32768 classes the JSD's took 1.49x, at 128
  # 0.70x. Chunks of fewer than 128 whole rows (32 of 262144 classes) leave
  # the gradients to class chunks: at N=512 the single pass took 2.42x, the
  # class chunks 1.91x. Traced, never run.
  if jax.default_backend() != "cpu":
    pytest.skip("accelerators have their own budget")
  n, d = 4096, 8
  shape = jax.ShapeDtypeStruct
  args = (shape((n, d), jnp.float32), shape((d, v), jnp.float32),
          shape((n, 2 * d), jnp.float32), shape((2 * d, v), jnp.float32))
  jaxpr = jax.make_jaxpr(jax.value_and_grad(
      lambda *a: LOSS(*a, divergence=divergence), (0, 1)))(*args)
  out = {e.outvars[0].aval.shape for e in equations(jaxpr.jaxpr)
         if e.primitive.name == "dot_general"}
  whole = {s for s in out if s[1] == v and s[0] != d}
  assert whole == ({(rows, v)} if rows else set()), out


def test_value_and_grad_never_hold_the_logits():
  # Temporaries of the compiled value and gradient (compiled, never run): a
  # small fraction of one [N, V] float32 array, with the default chunks
  # (about 4 MiB of logits on CPUs) and the JSD, the most arrays per chunk.
  n, d, v = 4096, 16, 16384
  k = jax.random.split(jax.random.key(0), 4)
  h, h_t = (jax.random.normal(i, (n, d)) for i in k[:2])
  w, w_t = (jax.random.normal(i, (d, v)) for i in k[2:])
  logits = n * v * 4
  compiled = jax.jit(jax.value_and_grad(
      lambda h, w: LOSS(h, w, h_t, w_t, divergence="jsd"), (0, 1))).lower(
          h, w).compile()
  temporaries = compiled.memory_analysis().temp_size_in_bytes
  assert temporaries < logits / 4, (temporaries, logits)


def test_half_precision_float32_statistics():
  rng = np.random.default_rng(5)
  args = [rng.normal(size=s) for s in ((6, D), (D, V), (6, D_T), (D_T, V))]

  def plain(h, w, h_t, w_t):
    log_q = jax.nn.log_softmax(h @ w)
    log_p = jax.nn.log_softmax(h_t @ w_t)
    return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1))

  want = jax.value_and_grad(plain, (0, 1))(*(jnp.asarray(a, jnp.float32)
                                             for a in args))
  value, grads = jax.value_and_grad(LOSS, (0, 1))(
      *(jnp.asarray(a, jnp.bfloat16) for a in args))
  assert value.dtype == jnp.float32
  assert all(g.dtype == jnp.bfloat16 for g in grads)
  np.testing.assert_allclose(value, want[0], rtol=3e-2)
  for g, w in zip(grads, want[1]):
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=5e-2,
                               atol=2e-2)
  # Mixed precision: float32 parameters, bfloat16 matmuls (dtype=), the
  # same logits as bfloat16 inputs and float32 gradients.
  mixed, mixed_grads = jax.value_and_grad(
      lambda *a: LOSS(*a, dtype=jnp.bfloat16), (0, 1))(
          *(jnp.asarray(a, jnp.float32) for a in args))
  assert mixed.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in mixed_grads)
  np.testing.assert_allclose(mixed, value, rtol=1e-6)
  for g, w in zip(mixed_grads, want[1]):
    np.testing.assert_allclose(g, w, rtol=5e-2, atol=2e-2)


def test_a_mean_over_nothing_is_zero():
  rng = np.random.default_rng(6)
  h, w = jnp.asarray(rng.normal(size=(3, D))), jnp.asarray(
      rng.normal(size=(D, V)))
  h_t, w_t = jnp.asarray(rng.normal(size=(3, D))), jnp.asarray(
      rng.normal(size=(D, V)))
  value, grads = jax.value_and_grad(
      lambda h, w: LOSS(h, w, h_t, w_t, where=jnp.zeros(3, bool)),
      (0, 1))(h, w)
  assert value == 0
  for g in grads:
    np.testing.assert_array_equal(g, 0)


def test_errors_name_the_argument_and_what_was_given():
  h, w = jnp.ones((3, 2)), jnp.ones((2, 5))
  h_t, w_t = jnp.ones((3, 4)), jnp.ones((4, 5))
  cases = [
      (dict(teacher_kernel=jnp.ones((4, 6))),
       r"teacher_kernel must have shape \(4, 5\) .*got shape \(4, 6\)"),
      (dict(student_kernel=jnp.ones((3, 5))),
       r"student_kernel must have shape \(2, V\) .*student_hidden has shape "
       r"\(3, 2\)\), got shape \(3, 5\)"),
      (dict(teacher_hidden=jnp.ones((2, 3, 4))),
       r"teacher_hidden shape \(2, 3, 4\) does not broadcast"),
      (dict(where=jnp.ones((3, 1), bool)),
       r"where shape \(3, 1\) does not broadcast to the batch shape of "
       r"student_hidden \(3,\)"),
      (dict(student_bias=jnp.ones(4)),
       r"student_bias must have shape \(5,\) \(one per class\), got \(4,\)"),
      (dict(divergence="kl"), r"divergence must be one of 'forward_kl', "
       r"'reverse_kl', 'jsd', got 'kl'"),
      (dict(beta=1.0), r"beta must be in \(0, 1\), got 1.0"),
      (dict(temperature=0.0), r"temperature must be in \(0, inf\), got 0.0"),
      (dict(student_kernel=jnp.ones((2, 0)), teacher_kernel=jnp.ones((4, 0))),
       r"student_kernel must have at least one class"),
  ]
  for kwargs, message in cases:
    full = dict(dict(student_hidden=h, student_kernel=w, teacher_hidden=h_t,
                     teacher_kernel=w_t), **kwargs)
    with pytest.raises(ValueError,
                       match=f"^linear_distillation_loss: {message}"):
      LOSS(**full)
  with pytest.raises(TypeError, match="linear_distillation_loss: "
                     "teacher_hidden must have a floating dtype"):
    LOSS(h, w, jnp.ones((3, 4), jnp.int32), w_t)
  with pytest.raises(TypeError, match="linear_distillation_loss: dtype "
                     "must be a floating dtype or None, got 'int32'"):
    LOSS(h, w, h_t, w_t, dtype=jnp.int32)
