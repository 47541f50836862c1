"""jaxloss.nn: instances as values, pytrees and jit arguments, and the edges.

Numbers against torch live in torch_cases_nn.py (golden and live).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss import nn

rng = np.random.default_rng(6)
X = jnp.asarray(rng.normal(0, 2, (5, 4)), jnp.float32)
T_ = jnp.asarray(rng.integers(0, 4, (5,)))
W = jnp.asarray(rng.uniform(0.5, 2, (4,)), jnp.float32)


def test_every_class_is_exported_and_frozen():
  for name in nn.__all__:
    cls = getattr(nn, name)
    assert dataclasses.is_dataclass(cls), name
    instance = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
      instance.reduction = "sum"


def test_equality_and_hash_by_value():
  a = nn.CrossEntropyLoss(weight=W, label_smoothing=0.1)
  b = nn.CrossEntropyLoss(weight=np.asarray(W), label_smoothing=0.1)
  assert a == b and hash(a) == hash(b)
  assert a != nn.CrossEntropyLoss(weight=W * 2, label_smoothing=0.1)
  assert a != nn.CrossEntropyLoss(weight=W)
  assert a != nn.NLLLoss(weight=W)
  assert nn.MSELoss() == nn.MSELoss() and nn.MSELoss() != nn.L1Loss()
  assert len({nn.MSELoss(), nn.MSELoss(), nn.MSELoss(reduction="sum")}) == 2


def test_array_options_become_immutable_arrays():
  weight = np.array(W)
  loss = nn.CrossEntropyLoss(weight=weight)
  weight[0] = 100.0                      # the instance does not see this
  assert isinstance(loss.weight, jax.Array)
  assert loss.weight[0] == W[0]


def test_static_argument_of_jit():
  traces = []

  def step(loss, x, t):
    traces.append(loss)
    return loss(x, t)

  step = jax.jit(step, static_argnums=0)
  first = step(nn.CrossEntropyLoss(weight=W, label_smoothing=0.1), X, T_)
  again = step(nn.CrossEntropyLoss(weight=W, label_smoothing=0.1), X, T_)
  assert len(traces) == 1                # an equal instance hits the cache
  np.testing.assert_array_equal(first, again)
  np.testing.assert_allclose(
      first, jaxloss.softmax_cross_entropy_with_integer_labels(
          X, T_, weight=W, label_smoothing=0.1, ignore_index=-100,
          reduction="mean"), rtol=1e-6)


def test_pytree_with_array_options_as_leaves():
  loss = nn.BCEWithLogitsLoss(weight=jnp.ones((5, 4)), pos_weight=W,
                              reduction="sum")
  leaves, treedef = jax.tree_util.tree_flatten(loss)
  assert len(leaves) == 2
  assert jax.tree_util.tree_unflatten(treedef, leaves) == loss
  doubled = jax.tree_util.tree_map(lambda w: 2 * w, loss)
  assert isinstance(doubled, nn.BCEWithLogitsLoss)
  assert doubled.reduction == "sum"
  np.testing.assert_allclose(doubled.pos_weight, 2 * W)
  assert jax.tree_util.tree_leaves(nn.MSELoss()) == []


def test_instance_as_traced_argument_and_gradient_of_its_weights():
  y = (X > 0).astype(jnp.float32)
  loss = nn.BCEWithLogitsLoss(pos_weight=W)

  @jax.jit
  def f(loss, x):
    return loss(x, y)

  np.testing.assert_allclose(
      f(loss, X), jaxloss.sigmoid_binary_cross_entropy(
          X, y, pos_weight=W, reduction="mean"), rtol=1e-6)
  g = jax.grad(f)(loss, X)
  assert isinstance(g, nn.BCEWithLogitsLoss)
  positive_part = -jnp.sum(y * jax.nn.log_sigmoid(X), axis=0) / X.size
  np.testing.assert_allclose(g.pos_weight, positive_part, rtol=1e-5)


def test_optax_style_loss_callable():
  loss_fn = nn.MSELoss()
  targets = X * 3.0

  def objective(scale):
    return loss_fn(scale * X, targets)

  scale = 1.0
  for _ in range(50):
    scale -= 0.1 * jax.grad(objective)(scale)
  np.testing.assert_allclose(scale, 3.0, rtol=1e-3)


@pytest.mark.parametrize("cls", [nn.CrossEntropyLoss, nn.NLLLoss])
def test_mean_over_nothing_is_zero_not_nan(cls):
  ignored = jnp.full((5,), -100)
  loss = cls(weight=W)
  value, grad = jax.value_and_grad(lambda x: loss(x, ignored))(X)
  assert value == 0.0                    # torch: nan
  np.testing.assert_array_equal(grad, 0.0)


def test_float32_in_float32_out():
  assert nn.CrossEntropyLoss()(X, T_).dtype == jnp.float32
  assert nn.MSELoss()(X.astype(jnp.bfloat16), X).dtype == jnp.float32


@pytest.mark.parametrize("cls,kwargs,error,match", [
    (nn.CrossEntropyLoss, {"reduction": "elementwise_mean"}, ValueError,
     "CrossEntropyLoss: reduction must be one of 'none', 'mean', 'sum', got "
     "'elementwise_mean'"),
    (nn.MSELoss, {"reduction": "batchmean"}, ValueError,
     "MSELoss: reduction must be one of"),
    (nn.BCELoss, {"weight": np.array(["a"])}, TypeError,
     "BCELoss: weight must be numeric"),
    (nn.CrossEntropyLoss, {"size_average": True}, TypeError,
     "size_average"),
    (nn.KLDivLoss, {"reduce": False}, TypeError, "reduce"),
])
def test_constructor_errors(cls, kwargs, error, match):
  with pytest.raises(error, match=match):
    cls(**kwargs)


def test_kl_div_accepts_batchmean():
  assert nn.KLDivLoss(reduction="batchmean").reduction == "batchmean"


def test_positional_call_that_would_bind_differently_fails():
  # torch: CrossEntropyLoss(weight, size_average, ignore_index, ...).
  with pytest.raises(TypeError):
    nn.CrossEntropyLoss(None, None, -100)
  # Positional arguments that mean the same as in torch are fine.
  assert nn.MultiMarginLoss(2, 0.5).p == 2
  assert nn.HuberLoss("sum", 2.0).delta == 2.0
  assert nn.CTCLoss(3, "sum", True).zero_infinity


# -- CTCLoss ---------------------------------------------------------------------

T, B, C = 8, 3, 5
LOG_PROBS = jax.nn.log_softmax(jnp.asarray(rng.normal(0, 1, (T, B, C)),
                                           jnp.float32))
TARGETS = jnp.array([[1, 2, 2, 0], [3, 0, 0, 0], [4, 1, 3, 2]])
INPUT_LENGTHS = jnp.array([8, 5, 7])
TARGET_LENGTHS = jnp.array([3, 1, 4])
CONCAT = jnp.array([1, 2, 2, 3, 4, 1, 3, 2])


@pytest.mark.slow  # Over 15 s on 2 shared cores.
def test_ctc_layouts_agree_and_lengths_may_be_traced():
  loss = nn.CTCLoss(reduction="none")
  padded = loss(LOG_PROBS, TARGETS, INPUT_LENGTHS, TARGET_LENGTHS)
  concat = loss(LOG_PROBS, CONCAT, tuple(INPUT_LENGTHS.tolist()),
                list(TARGET_LENGTHS.tolist()))
  traced = jax.jit(loss)(LOG_PROBS, CONCAT, INPUT_LENGTHS, TARGET_LENGTHS)
  np.testing.assert_allclose(concat, padded, rtol=1e-6)
  np.testing.assert_allclose(traced, padded, rtol=1e-6)
  single = loss(LOG_PROBS[:, 1], TARGETS[1, :1], INPUT_LENGTHS[1],
                TARGET_LENGTHS[1])
  assert single.shape == ()
  np.testing.assert_allclose(single, padded[1], rtol=1e-6)


def test_ctc_mean_divides_by_target_lengths():
  losses = nn.CTCLoss(reduction="none")(LOG_PROBS, TARGETS, INPUT_LENGTHS,
                                        TARGET_LENGTHS)
  mean = nn.CTCLoss()(LOG_PROBS, TARGETS, INPUT_LENGTHS, TARGET_LENGTHS)
  np.testing.assert_allclose(mean, jnp.mean(losses / TARGET_LENGTHS),
                             rtol=1e-6)
  np.testing.assert_allclose(
      nn.CTCLoss(reduction="sum")(LOG_PROBS, TARGETS, INPUT_LENGTHS,
                                  TARGET_LENGTHS), losses.sum(), rtol=1e-6)


def test_ctc_infinite_loss_has_zero_gradient():
  # 3 frames for 4 labels: inf, and a zero gradient (torch: nan, unless
  # zero_infinity, which the torch parity cases cover).
  short = jnp.array([8, 5, 3])
  loss = nn.CTCLoss(reduction="sum")
  value, g = jax.value_and_grad(loss)(LOG_PROBS, TARGETS, short,
                                      TARGET_LENGTHS)
  assert value == np.inf
  assert np.isfinite(g).all()
  np.testing.assert_array_equal(g[:, 2], 0.0)


@pytest.mark.parametrize("args,error,match", [
    ((LOG_PROBS[0, 0], TARGETS, INPUT_LENGTHS, TARGET_LENGTHS), ValueError,
     r"CTCLoss: log_probs must have shape \(T, N, C\) or \(T, C\)"),
    ((LOG_PROBS, TARGETS.astype(jnp.complex64), INPUT_LENGTHS,
      TARGET_LENGTHS), TypeError, "CTCLoss: targets must be real"),
    ((LOG_PROBS, TARGETS[:2], INPUT_LENGTHS, TARGET_LENGTHS), ValueError,
     r"CTCLoss: targets must have shape \(3, S\)"),
    ((LOG_PROBS, TARGETS, INPUT_LENGTHS[:2], TARGET_LENGTHS), ValueError,
     r"CTCLoss: input_lengths must have shape \(3,\)"),
    ((LOG_PROBS, TARGETS, INPUT_LENGTHS, TARGET_LENGTHS * 1.0), TypeError,
     "CTCLoss: target_lengths must have an integer dtype"),
    ((LOG_PROBS[:, 0], TARGETS, 8, 3), ValueError,
     r"CTCLoss: targets must have shape \(S,\) or \(1, S\) for unbatched "
     r"log_probs shape \(8, 5\), got shape \(3, 4\)"),
    ((LOG_PROBS[..., :4], TARGETS, INPUT_LENGTHS, TARGET_LENGTHS, 4),
     ValueError, r"CTCLoss: blank must be in \[0, 4\) \(a class of log_probs "
     r"shape \(8, 3, 4\)\), got 4"),
    ((LOG_PROBS, TARGETS, jnp.array([8, 9, 7]), TARGET_LENGTHS), ValueError,
     r"CTCLoss: input_lengths must be in \[0, 8\] \(at most T, the length "
     r"of log_probs\), got \[8, 9, 7\]"),
    ((LOG_PROBS, TARGETS, INPUT_LENGTHS, jnp.array([3, 5, 4])), ValueError,
     r"CTCLoss: target_lengths must be in \[0, 4\] \(at most S"),
    ((LOG_PROBS, CONCAT, INPUT_LENGTHS, jnp.array([3, 1, 3])), ValueError,
     "CTCLoss: target_lengths must add up to the length 8 of the "
     "concatenated targets, got"),
])
def test_ctc_errors(args, error, match):
  *args, blank = args if len(args) == 5 else (*args, 0)
  with pytest.raises(error, match=match):
    nn.CTCLoss(blank=blank)(*args)


def test_ctc_blank_must_be_a_class_index():
  with pytest.raises(ValueError, match="CTCLoss: blank must be a class "
                     "index, at least 0, got -1"):
    nn.CTCLoss(blank=-1)
  with pytest.raises(TypeError, match="CTCLoss: blank must be an int, got "
                     "1.0"):
    nn.CTCLoss(blank=1.0)
  # A NumPy integer is an int.
  np.testing.assert_array_equal(
      nn.CTCLoss(blank=np.int64(0))(LOG_PROBS, TARGETS, INPUT_LENGTHS,
                                    TARGET_LENGTHS),
      nn.CTCLoss()(LOG_PROBS, TARGETS, INPUT_LENGTHS, TARGET_LENGTHS))


@pytest.mark.slow
def test_ctc_accepts_what_torch_accepts():
  loss = nn.CTCLoss(reduction="none")
  want = loss(LOG_PROBS, TARGETS, INPUT_LENGTHS, TARGET_LENGTHS)
  # Floating targets truncated, boolean ones read as 0 and 1 (torch's
  # numbers, tests/torch_cases_nn.py); lengths of any shape holding N.
  np.testing.assert_array_equal(
      loss(LOG_PROBS, TARGETS + 0.75, INPUT_LENGTHS, TARGET_LENGTHS), want)
  np.testing.assert_array_equal(
      loss(LOG_PROBS, TARGETS, INPUT_LENGTHS[None], TARGET_LENGTHS[:, None]),
      want)
  ones = jnp.ones_like(TARGETS)
  np.testing.assert_array_equal(
      loss(LOG_PROBS, ones.astype(bool), INPUT_LENGTHS, TARGET_LENGTHS),
      loss(LOG_PROBS, ones, INPUT_LENGTHS, TARGET_LENGTHS))
  # Unbatched input with a (1, S) target.
  np.testing.assert_array_equal(
      loss(LOG_PROBS[:, 2], TARGETS[2:], INPUT_LENGTHS[2], TARGET_LENGTHS[2]),
      want[2])
  # Under checked, a fractional class index is flagged.
  with pytest.raises(jaxloss.CheckError, match=r"CTCLoss: targets must be "
                     r"whole numbers \(class indices\); first offending "
                     r"element targets\[0, 1\] = 2.5"):
    jaxloss.checked(loss)(LOG_PROBS, (TARGETS + 0.0).at[0, 1].add(0.5),
                          INPUT_LENGTHS, TARGET_LENGTHS)


def test_ctc_empty_batch():
  # torch raises ("log_probs tensor must not be empty"); here the empty
  # batch gives what every loss gives: empty, and 0 for a mean.
  empty = (LOG_PROBS[:, :0], TARGETS[:0], INPUT_LENGTHS[:0],
           TARGET_LENGTHS[:0])
  assert nn.CTCLoss(reduction="none")(*empty).shape == (0,)
  for reduction in ("mean", "sum"):
    value, grad = jax.value_and_grad(nn.CTCLoss(reduction=reduction))(*empty)
    assert value == 0 and grad.shape == (T, 0, C)


def test_kl_div_loss_shape_contract():
  log_p = jax.nn.log_softmax(X)
  target = jax.nn.softmax(X[:1] * 2)
  loss = nn.KLDivLoss(reduction="sum")
  # A target row broadcasts to the input, as in torch.
  np.testing.assert_allclose(loss(log_p, target),
                             loss(log_p, jnp.broadcast_to(target, X.shape)),
                             rtol=1e-6)
  # torch broadcasts [N] against [N, 1] to [N, N] silently: here an error.
  with pytest.raises(ValueError, match=(
      r"kl_div: targets shape \(5, 1\) does not broadcast to "
      r"log_predictions shape \(5,\)")):
    loss(log_p[:, 0], jnp.full((5, 1), 0.25))
  with pytest.raises(ValueError, match=(
      r"kl_div: targets shape \(5, 4\) does not broadcast to "
      r"log_predictions shape \(1, 4\)")):
    loss(log_p[:1], jnp.broadcast_to(target, X.shape))


# -- torch's layouts for the margin and binary classes ---------------------------


def test_margin_and_binary_classes_take_torch_layouts():
  # From torch's OpInfo samples: 0-d inputs, a (C,) input with a (1,)
  # target; "none" has the target's shape, as torch's.
  x = jnp.array([0.1, 0.5, 0.3])
  multi = nn.MultiMarginLoss(reduction="none")
  np.testing.assert_allclose(multi(x, jnp.array([1])), [(0.6 + 0.8) / 3],
                             rtol=1e-6)
  assert multi(x, jnp.array(1)).shape == ()
  assert multi(x[None], jnp.array(1)).shape == ()
  for target in (jnp.array(0), jnp.array([0])):
    out = multi(jnp.float32(0.5), target)
    assert out.shape == target.shape and np.all(out == 0)
  assert nn.MultiMarginLoss()(jnp.float32(0.5), jnp.array(0)) == 0
  for target in (jnp.array(0), jnp.array([0]), jnp.array(-1)):
    assert nn.MultiLabelMarginLoss()(jnp.float32(0.5), target) == 0
  assert nn.MultiLabelMarginLoss()(jnp.array([0.5]), jnp.array(0)) == 0
  np.testing.assert_allclose(nn.BCELoss()(jnp.float32(0.25), jnp.float32(1)),
                             np.log(4), rtol=1e-6)
  np.testing.assert_allclose(
      nn.BCEWithLogitsLoss()(jnp.float32(0.0), jnp.float32(1)), np.log(2),
      rtol=1e-6)
  # Weights broadcast to the input, as torch's.
  p = jax.nn.sigmoid(X)
  np.testing.assert_allclose(
      nn.BCELoss(weight=W)(p, p), nn.BCELoss(
          weight=jnp.broadcast_to(W, X.shape))(p, p), rtol=1e-6)


@pytest.mark.parametrize("loss,args,error,match", [
    (nn.BCELoss(), (jnp.full((3, 4), 0.5), jnp.ones(4)), ValueError,
     r"BCELoss: target shape \(4,\) does not match input shape \(3, 4\)"),
    (nn.BCEWithLogitsLoss(), (jnp.ones((3, 4)), jnp.ones((3, 1))), ValueError,
     r"BCEWithLogitsLoss: target shape \(3, 1\) does not match input shape "
     r"\(3, 4\)"),
    (nn.BCEWithLogitsLoss(pos_weight=jnp.ones(5)),
     (jnp.ones((3, 4)), jnp.ones((3, 4))), ValueError,
     r"pos_weight shape \(5,\) does not broadcast to logits shape \(3, 4\)"),
    (nn.BCELoss(weight=jnp.ones((2, 3, 4))),
     (jnp.full((3, 4), 0.5), jnp.ones((3, 4))), ValueError,
     r"weight shape \(2, 3, 4\) does not broadcast to probs shape \(3, 4\)"),
    (nn.MultiMarginLoss(), (jnp.ones((3, 4)), jnp.zeros((3, 1), int)),
     ValueError, r"MultiMarginLoss: target shape \(3, 1\) does not match "
     r"input shape \(3, 4\): torch wants a target of shape \(3,\)"),
    (nn.MultiMarginLoss(), (jnp.ones((3, 4)), jnp.zeros(1, int)), ValueError,
     r"MultiMarginLoss: target shape \(1,\) does not match input shape "
     r"\(3, 4\)"),
    (nn.MultiMarginLoss(), (jnp.ones((2, 3, 4)), jnp.zeros((2, 3), int)),
     ValueError, r"MultiMarginLoss: input must be a non-empty vector or a "
     r"matrix \(N, C\) with C > 0, as in torch, got shape \(2, 3, 4\)"),
    (nn.MultiMarginLoss(), (jnp.ones((5, 0)), jnp.zeros(5, int)), ValueError,
     r"got shape \(5, 0\)"),
    (nn.MultiLabelMarginLoss(), (jnp.ones((1, 4)), jnp.zeros(4, int)),
     ValueError, r"MultiLabelMarginLoss: target shape \(4,\) does not match "
     r"input shape \(1, 4\)"),
    (nn.MultiLabelMarginLoss(), (jnp.ones(3), jnp.zeros(1, int)),
     ValueError, r"MultiLabelMarginLoss: target shape \(1,\) does not match "
     r"input shape \(3,\)"),
    (nn.MultiLabelSoftMarginLoss(), (jnp.ones((3, 4)), jnp.ones((3, 1))),
     ValueError, r"multilabel_soft_margin_loss: targets shape \(3, 1\) does "
     r"not broadcast to predictions shape \(3, 4\): the class axis 1"),
    (nn.SoftMarginLoss(), (jnp.ones((3, 1)), jnp.ones(3)), ValueError,
     r"soft_margin_loss: targets shape \(3,\) does not broadcast to "
     r"predictions shape \(3, 1\)"),
])
def test_margin_and_binary_classes_reject_what_torch_rejects(loss, args,
                                                              error, match):
  with pytest.raises(error, match=match):
    loss(*args)


@pytest.mark.parametrize("kwargs,match", [
    ({"p": 3}, "MultiMarginLoss: p must be 1 or 2, got 3"),
    ({"weight": jnp.ones((2, 3))}, r"MultiMarginLoss: weight must be None or "
     r"a 1-D array \(one per class\), got shape \(2, 3\)"),
])
def test_multi_margin_loss_options_checked_when_built(kwargs, match):
  with pytest.raises(ValueError, match=match):
    nn.MultiMarginLoss(**kwargs)


LH = np.ones((4, 3))
LW = np.ones((5, 3))
LT = np.array([0, 1, 4, 2])


@pytest.mark.parametrize("args,options,error,match", [
    ((LH[None], LW, LT), {}, ValueError,
     r"LinearCrossEntropyLoss: input must have shape \(in_features,\) or "
     r"\(N, in_features\), as in torch, got shape \(1, 4, 3\)"),
    ((LH, LW[:, :2], LT), {}, ValueError,
     r"LinearCrossEntropyLoss: linear_weight must have shape \(C, "
     r"in_features\) or \(C, d1, ..., dK, in_features\) with in_features 3 "
     r"\(input shape \(4, 3\)\), got shape \(5, 2\)"),
    ((LH[0], np.ones((5, 2, 3)), np.ones((5, 2))), {}, ValueError,
     r"a K-dimensional linear_weight \(shape \(5, 2, 3\)\) needs batched "
     r"input \(N, 3\), got shape \(3,\)"),
    ((LH, LW, LT, np.ones(4)), {}, ValueError,
     r"LinearCrossEntropyLoss: linear_bias must have shape \(5,\)"),
    ((LH, LW, np.full((4, 5), 0.2)), {"ignore_index": 0}, ValueError,
     "LinearCrossEntropyLoss: ignore_index applies to class-index targets, "
     "got ignore_index=0 with probability targets of dtype float"),
    ((LH, LW, np.full((4, 4), 0.2)), {}, ValueError,
     r"LinearCrossEntropyLoss: target shape \(4, 4\) does not broadcast to "
     r"the logits shape \(4, 5\)"),
    ((LH, LW, LT[:3]), {}, ValueError,
     r"LinearCrossEntropyLoss: target shape \(3,\) does not broadcast to "
     r"the logits' batch shape \(4,\)"),
    ((LH, LW, LT > 1), {}, TypeError,
     "LinearCrossEntropyLoss: target must have an integer dtype"),
])
def test_linear_cross_entropy_errors(args, options, error, match):
  with pytest.raises(error, match=match):
    nn.LinearCrossEntropyLoss(**options)(*args)


def test_linear_cross_entropy_is_a_jit_argument():
  """A pytree whose leaf is the class weight; torch's default ignore_index
  (None) means -100."""
  w = np.arange(1.0, 6.0)
  h = np.random.default_rng(0).normal(size=(4, 3))
  kernel = np.random.default_rng(1).normal(size=(5, 3))
  labels = np.array([0, -100, 4, 2])
  step = jax.jit(lambda loss, h: loss(h, kernel, labels))
  a = step(nn.LinearCrossEntropyLoss(w, ignore_index=None), h)
  b = step(nn.LinearCrossEntropyLoss(w), h)
  want = nn.CrossEntropyLoss(w)(h @ kernel.T, labels)
  np.testing.assert_allclose(a, want, rtol=1e-6)
  np.testing.assert_array_equal(a, b)


def test_linear_cross_entropy_constructor_order():
  """(weight, reduction, ignore_index, label_smoothing), each by position."""
  h = np.random.default_rng(0).normal(size=(4, 3))
  kernel = np.random.default_rng(1).normal(size=(5, 3))
  labels = np.array([0, 1, 4, 2])
  w = np.arange(1.0, 6.0)
  got = nn.LinearCrossEntropyLoss(w, "none", 1, 0.25)(h, kernel, labels)
  want = nn.CrossEntropyLoss(w, ignore_index=1, reduction="none",
                             label_smoothing=0.25)(h @ kernel.T, labels)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert got[1] == 0


def test_cross_entropy_floating_targets_are_probabilities_of_input_shape():
  # torch's layouts: floating class indices (N == C here) are not a row of
  # probabilities for every example, and ignore_index has no meaning there.
  x = jnp.array([[1.0, 2.0, 0.5], [0.1, 0.2, 3.0], [2.0, 0.0, 0.0]])
  loss = jaxloss.nn.CrossEntropyLoss()
  with pytest.raises(ValueError, match=r"CrossEntropyLoss: a floating target "
                     r"holds class probabilities of input's shape \(3, 3\), "
                     r"got shape \(3,\); class indices need an integer"):
    loss(x, jnp.array([0.0, 1.0, 1.0]))
  with pytest.raises(ValueError, match="ignore_index applies to class-index"):
    jaxloss.nn.CrossEntropyLoss(ignore_index=1)(x, jnp.eye(3))
  np.testing.assert_allclose(loss(x, jnp.eye(3)),
                             loss(x, jnp.array([0, 1, 2])), rtol=1e-6)
