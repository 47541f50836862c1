"""Data parallel: every loss under ``jax.jit`` with its batch sharded.

The batch axis of every batched argument is split over a 1-D mesh of the 8
host CPU devices (``conftest.py``); kernels and per-class weights are
replicated. For each loss of the catalogue, in one compiled program:

- ``reduction="none"`` comes out sharded like the batch, and no collective
  feeds it: each device computes its own examples' losses;
- ``"mean"`` and ``"sum"`` come from one all-reduce of scalars, never an
  all-gather, and the gradient of the mean comes out sharded like the batch;
- every value equals the unsharded call (the gradients too, in the tests
  of masks and weights, of the ``jaxloss.nn`` classes and of the losses
  below).

Some losses read more than their own example; they are listed below with
the reason, and checked for the right values and gradients under sharding.
Last, with a mesh of Explicit axis type (``jax.make_mesh``'s default), each
loss must trace with the batch sharding in its output's type.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import catalogue
import jaxloss
from jaxloss import _checks

B = 16

# Losses whose examples meet: each needs every example of the batch, so the
# compiled program gathers them (the all-gather is the algorithm itself).
CROSS_EXAMPLE = {
    "ntxent": "in-batch negatives: the similarity of every pair of "
              "embeddings, so each device needs the whole batch",
}

# Losses where each example's loss reads a statistic of the whole batch: the
# statistic costs an all-reduce (of a scalar, or one value per class), never
# a gather.
BATCH_STATISTIC = {
    "multiclass_generalized_dice_loss":
        "class weights from the whole batch's target mass per class, as "
        "optax: an all-reduce of [C] sums",
    "squared_hinge":
        "Keras's rule: targets are read as {0, 1} and mapped to -1/+1 only "
        "if every target of the batch is 0 or 1: an all-reduce of one "
        "boolean, even for reduction='none'",
}

# Losses whose value alone, on CPUs, is a plain sum behind one condition on
# the whole batch (jaxloss._value_form.unless_nan): the condition costs an
# all-reduce of one scalar, even for reduction="none".
PROBED = {
    name: "on CPUs the plain sum of the terms unless it is NaN (0 * inf), "
          "a condition on the whole batch"
    for name in ("kl_divergence_with_log_targets", "softmax_cross_entropy",
                 "safe_softmax_cross_entropy")
} if jax.default_backend() == "cpu" else {}
if jax.default_backend() == "cpu":
  PROBED["multiclass_sparsemax_loss"] = (
      "on CPUs the threshold's Newton steps go on while some row's support "
      "shrinks: a count over the whole batch, each step")

# The integer-label cross entropy with label smoothing: on CPUs its
# support's sums are the plain sums over every class unless not finite, a
# condition on the whole batch too (an all-reduce of one scalar).
SMOOTHING_PROBED = jax.default_backend() == "cpu"

# dice_loss's "mean" and "sum" reduce the class axis only, as optax: the
# batch stays, sharded, and nothing is communicated.
CLASS_REDUCTION = {"dice_loss"}

# ctc_loss_with_forward_probs also returns forward log-probabilities
# [T, B, ...], time first: the batch on axis 1.
SECOND_OUTPUT_BATCH_AXIS = {"ctc_loss_with_forward_probs": 1}

COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute",
               "reduce-scatter", "collective-broadcast")
_INSTRUCTION = re.compile(r"\s*(?:ROOT\s+)?%([\w.\-]+) = (\(.*?\)|\S+) "
                          r"([\w\-]+)\((.*)")


def hlo_entry(text):
  """``{name: (op, result shape, operand names)}`` of the entry computation
  of compiled HLO text, and the name of its root."""
  entry = text[text.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  instructions, root = {}, None
  for line in entry.splitlines()[1:]:
    m = _INSTRUCTION.match(line)
    if m is None:
      continue
    name, shape, op, rest = m.groups()
    instructions[name] = (op, shape, re.findall(r"%([\w.\-]+)", rest))
    if line.lstrip().startswith("ROOT"):
      root = name
  return instructions, root


def collectives(text):
  """``[(op, result shape)]`` of every collective of the entry computation
  (``all-reduce-start`` reads as ``all-reduce``)."""
  instructions, _ = hlo_entry(text)
  return [(op.removesuffix("-start"), shape)
          for op, shape, _ in instructions.values()
          if op.removesuffix("-start") in COLLECTIVES]


def collectives_feeding(text, output):
  """The collectives that output ``output`` of the entry's root tuple is
  computed from (operand names that are not instructions, such as called
  computations, are ignored)."""
  instructions, root = hlo_entry(text)
  op, _, operands = instructions[root]
  todo = [operands[output]] if op == "tuple" else [root]
  seen, found = set(), []
  while todo:
    name = todo.pop()
    if name in seen or name not in instructions:
      continue
    seen.add(name)
    op, _, operands = instructions[name]
    if op.removesuffix("-start") in COLLECTIVES:
      found.append(op.removesuffix("-start"))
    todo.extend(operands)
  return found


def scalar_only(shape):
  """Whether an HLO result shape (maybe a tuple) holds only scalars."""
  dims = re.findall(r"\[([^\]]*)\]", shape)
  return bool(dims) and all(d == "" for d in dims)


def leaf_indices(tree, key):
  """Positions of ``tree[key]``'s leaves among ``tree``'s leaves."""
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  return [i for i, p in enumerate(paths) if p[0].key == key]


@functools.cache
def mesh(axis_type="Auto"):
  return jax.make_mesh((8,), ("data",),
                       axis_types=(getattr(AxisType, axis_type),))


def batch_sharding(ndim, axis=0, axis_type="Auto"):
  spec = [None] * ndim
  spec[axis] = "data"
  return NamedSharding(mesh(axis_type), P(*spec))


def shard(name, args, axis_type="Auto"):
  """Batched arguments split over the mesh, the others replicated."""
  return tuple(
      jax.device_put(x, batch_sharding(x.ndim, axis_type=axis_type) if b
                     else NamedSharding(mesh(axis_type), P()))
      for x, b in zip(args, catalogue.batched(name)))


def assert_batch_sharded(x, axis=0):
  assert x.sharding.is_equivalent_to(batch_sharding(x.ndim, axis),
                                     x.ndim), x.sharding


def assert_replicated(x):
  assert x.sharding.is_fully_replicated, x.sharding


def assert_masked_step(out, text, expected, grad_axis=0, probed=False):
  """A masked or weighted loss: its mean from one or two all-reduces of
  scalars, its per-example losses and gradient sharded with no collective
  (``probed``: a condition on the whole batch, one all-reduce of scalars
  more, which the per-example losses read), and the unsharded values."""
  ops = collectives(text)
  assert 1 <= len(ops) <= 2 + probed, ops
  assert {op for op, _ in ops} == {"all-reduce"}, ops
  assert all(scalar_only(shape) for _, shape in ops), ops
  (none,) = leaf_indices(out, "none")
  assert set(collectives_feeding(text, none)) <= (
      {"all-reduce"} if probed else set())
  assert_batch_sharded(out["none"])
  assert_batch_sharded(out["grad"], grad_axis)
  assert_replicated(out["mean"])
  close(out, expected)


def close(actual, expected, rtol=1e-5):
  # Sharded sums add in another order: float32 rounding, nothing more.
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected),
                  strict=True):
    e = np.asarray(e, np.float64)
    atol = rtol * max(1.0, float(np.max(np.abs(e), initial=0.0)))
    np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=rtol,
                               atol=atol)


def has_reduction(name):
  f = jaxloss.get(name)
  return "reduction" in getattr(f, "__wrapped__", f).__code__.co_varnames


def loss_of(out):
  """The loss itself: ctc_loss_with_forward_probs returns a tuple."""
  return out[0] if isinstance(out, tuple) else out


# One small program per loss: LLVM's optimisation passes only change its
# speed, and would dominate the run time.
jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def run_sharded(fn, sharded, unsharded):
  """``fn`` compiled for the sharded inputs: its outputs, its HLO text, and
  the outputs of the same function on the unsharded inputs."""
  compiled = fn.lower(*sharded).compile()
  return compiled(*sharded), compiled.as_text(), fn(*unsharded)


@functools.cache
def probe(name):
  """``"none"``, ``"mean"``, ``"sum"`` and the mean's gradient in argument
  0, in one program."""
  f = catalogue.loss(name)

  def run(x, *rest):
    def mean(x):
      return loss_of(f(x, *rest, reduction="mean"))
    # jnp.sum: dice_loss's "mean" keeps the batch. The sum itself is not
    # returned, so it costs no all-reduce.
    (_, m), grad = jax.value_and_grad(
        lambda x: (jnp.sum(m := mean(x)), m), has_aux=True)(x)
    return {"none": f(x, *rest, reduction="none"), "mean": m, "grad": grad,
            "sum": loss_of(f(x, *rest, reduction="sum"))}

  return jit(run)


PER_EXAMPLE = sorted(n for n in catalogue.SPECS
                     if has_reduction(n) and n not in BATCH_STATISTIC)
# binary_dice_loss has no reduction keyword either (its loss is per example,
# as optax's): checked with the losses that read the whole batch.
WHOLE_BATCH = sorted(n for n in catalogue.SPECS if not has_reduction(n)
                     or n in BATCH_STATISTIC or n in CROSS_EXAMPLE)


def test_the_tables_cover_the_catalogue():
  assert set(catalogue.SPECS) == set(jaxloss.names())
  assert set(PER_EXAMPLE) | set(WHOLE_BATCH) == set(catalogue.SPECS)
  assert set(CROSS_EXAMPLE) | set(BATCH_STATISTIC) <= set(WHOLE_BATCH)


# Slow to compile (a scan and its transpose): test_nn_classes[CTCLoss] runs
# the same code by default, with the batch on axis 1.
SLOW = {"ctc_loss", "ctc_loss_with_forward_probs"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
    for n in PER_EXAMPLE])
def test_per_example_losses_stay_sharded_and_reductions_all_reduce(name):
  args = catalogue.inputs(name, B, seed=1)
  sharded = shard(name, args)
  compiled = probe(name).lower(*sharded).compile()
  out, text = compiled(*sharded), compiled.as_text()

  none = jax.tree.leaves(out["none"])
  for i, x in enumerate(none):
    assert_batch_sharded(x, SECOND_OUTPUT_BATCH_AXIS.get(name, 0) if i
                         else 0)
  for i in leaf_indices(out, "none"):
    feeding = collectives_feeding(text, i)
    # A probed loss's conditions: all-reduces of scalars (checked below).
    assert set(feeding) <= ({"all-reduce"} if name in PROBED else set())
  assert_batch_sharded(out["grad"])
  ops = collectives(text)
  if name in PROBED:
    assert {op for op, _ in ops} == {"all-reduce"}, ops
    assert all(scalar_only(shape) for _, shape in ops), ops
    assert_replicated(out["mean"])
    assert_replicated(out["sum"])
  elif name in CLASS_REDUCTION:
    assert ops == []
    assert_batch_sharded(out["mean"])
    assert_batch_sharded(out["sum"])
  else:
    # The sum and the mean (the sum over a count known when compiling) are
    # one all-reduce of scalars; the gradient of a mean needs none.
    assert [op for op, _ in ops] == ["all-reduce"], ops
    assert all(scalar_only(shape) for _, shape in ops), ops
    assert_replicated(out["mean"])
    assert_replicated(out["sum"])
  # The reference: the unsharded per-example losses, aggregated in float64
  # ("sum" equals the sum of "none" and the catalogue has no mask, so
  # "mean" is their mean). The gradient's values are compared in the tests
  # below; here, one small unsharded program keeps the test fast.
  expected = catalogue.loss(name)(*args, reduction="none")
  close(out["none"], expected)
  per_example = np.asarray(loss_of(expected), np.float64)
  axis = -1 if name in CLASS_REDUCTION else None
  close(out["sum"], per_example.sum(axis))
  close(out["mean"], per_example.mean(axis))


def test_squared_hinge_reads_the_whole_batch():
  # Why squared_hinge is in BATCH_STATISTIC: one target outside {0, 1}
  # elsewhere in the batch changes example 0's loss.
  x = jnp.full((B, 3), 0.5)
  t = jnp.zeros((B, 3))
  other = t.at[-1, 0].set(2.0)
  assert jaxloss.squared_hinge(x, t)[0] != jaxloss.squared_hinge(x, other)[0]


@pytest.mark.parametrize("name", WHOLE_BATCH)
def test_losses_that_read_the_whole_batch(name):
  """Right values and gradients; a gather only where examples meet."""
  args = catalogue.inputs(name, B, seed=3)
  f = catalogue.loss(name)

  def run(x, *rest):
    return {"loss": f(x, *rest),
            "grad": jax.grad(lambda x: jnp.sum(f(x, *rest)))(x)}

  out, text, expected = run_sharded(jit(run), shard(name, args), args)
  close(out, expected)
  assert_batch_sharded(out["grad"])
  if out["loss"].ndim:
    assert_batch_sharded(out["loss"])
  else:
    assert_replicated(out["loss"])
  (loss,) = leaf_indices(out, "loss")
  feeding = set(collectives_feeding(text, loss))
  if name in CROSS_EXAMPLE:
    assert "all-gather" in feeding, feeding
  elif name in BATCH_STATISTIC:
    assert feeding == {"all-reduce"}, feeding
  else:
    assert feeding == set()


# Masks, class weights and ignored labels: "mean" divides a sum by another
# sum (of the kept rows, or of their class weights). The two scalar sums take
# one or two all-reduces (XLA may combine them); per-class arrays are
# replicated, so nothing is gathered.
MASKED = {
    "ce_weight_ignore_index": (
        "softmax_cross_entropy_with_integer_labels",
        lambda rng: {"weight": rng.uniform(0.5, 2, 5)},
        {"ignore_index": 2}),
    "ce_where_label_smoothing": (
        "softmax_cross_entropy_with_integer_labels",
        lambda rng: {"where": rng.uniform(size=B) > 0.3},
        {"label_smoothing": 0.1}),
    "sigmoid_pos_weight_where": (
        "sigmoid_binary_cross_entropy",
        lambda rng: {"pos_weight": rng.uniform(0.5, 2, 5),
                     "where": rng.uniform(size=(B, 5)) > 0.3}, {}),
    "linear_bias_weight_where": (
        "linear_softmax_cross_entropy",
        lambda rng: {"bias": rng.normal(size=5),
                     "weight": rng.uniform(0.5, 2, 5),
                     "where": rng.uniform(size=B) > 0.3}, {}),
}


@pytest.mark.parametrize("case", sorted(MASKED))
def test_masked_and_weighted_means(case):
  name, make, static = MASKED[case]
  args = catalogue.inputs(name, B, seed=4)
  # "where" has the batch; biases and class weights are per class.
  arrays = {k: jnp.asarray(v, jnp.float32 if v.dtype.kind == "f" else None)
            for k, v in make(np.random.default_rng(4)).items()}
  placed = {k: jax.device_put(v, batch_sharding(v.ndim) if k == "where"
                              else NamedSharding(mesh(), P()))
            for k, v in arrays.items()}
  f = catalogue.loss(name)

  def run(x, rest, arrays):
    def loss(x, reduction):
      return f(x, *rest, **arrays, **static, reduction=reduction)
    return {"none": loss(x, "none"), "mean": loss(x, "mean"),
            "sum": loss(x, "sum"),
            "grad": jax.grad(lambda x: loss(x, "mean"))(x)}

  sharded = shard(name, args)
  out, text, expected = run_sharded(jit(run), (sharded[0], sharded[1:],
                                               placed),
                                    (args[0], args[1:], arrays))
  assert_masked_step(out, text, expected, probed=SMOOTHING_PROBED and (
      "label_smoothing" in static))


# torch-style classes, "mean" by default: two representative ones, and
# CTCLoss with its time-first log-probabilities (the batch on axis 1).
def nn_cases(rng):
  logits = rng.normal(size=(B, 5))
  return {
      "CrossEntropyLoss": (
          jaxloss.nn.CrossEntropyLoss(weight=jnp.asarray(
              rng.uniform(0.5, 2, 5), jnp.float32), label_smoothing=0.1),
          [(logits, 0), (rng.integers(0, 5, B), 0)]),
      "TripletMarginLoss": (jaxloss.nn.TripletMarginLoss(),
                            [(rng.normal(size=(B, 3)), 0) for _ in range(3)]),
      "CTCLoss": (
          jaxloss.nn.CTCLoss(),
          [(np.log(rng.dirichlet(np.ones(5), (6, B))), 1),
           (rng.integers(1, 5, (B, 2)), 0), (np.full(B, 6), 0),
           (rng.integers(1, 3, B), 0)]),
  }


@pytest.mark.parametrize("cls", sorted(nn_cases(np.random.default_rng(0))))
def test_nn_classes(cls):
  loss, inputs = nn_cases(np.random.default_rng(5))[cls]
  args = [jnp.asarray(x, jnp.int32 if np.asarray(x).dtype.kind in "iu"
                      else jnp.float32) for x, _ in inputs]
  sharded = [jax.device_put(x, batch_sharding(x.ndim, axis))
             for x, (_, axis) in zip(args, inputs)]
  per_example = dataclasses.replace(loss, reduction="none")

  def run(x, *rest):
    return {"mean": loss(x, *rest), "none": per_example(x, *rest),
            "grad": jax.grad(lambda x: loss(x, *rest))(x)}

  out, text, expected = run_sharded(jit(run), sharded, args)
  assert_masked_step(out, text, expected, grad_axis=inputs[0][1],
                     probed=SMOOTHING_PROBED and bool(
                         getattr(loss, "label_smoothing", 0)))


# jax.make_mesh's default axis type is Explicit: shardings are part of the
# array types and each operation must have a sharding rule. Traced only:
# "none" must come out with the batch sharding in its type (a scalar loss,
# replicated).
@pytest.mark.parametrize("name", sorted(catalogue.SPECS))
def test_explicit_sharding_types(name):
  args = shard(name, catalogue.inputs(name, B), axis_type="Explicit")
  f = catalogue.loss(name)
  kwargs = {"reduction": "none"} if has_reduction(name) else {}
  out = jax.eval_shape(lambda *a: loss_of(f(*a, **kwargs)), *args)
  expected = P("data") if out.ndim else P()
  assert out.sharding.spec[:1] == expected[:1], out.sharding.spec


def test_value_checks_trace_under_explicit_sharding():
  # The value checks are traced even when not run: the first offending
  # element is picked without indexing the sharded dimension, and reported.
  x = jax.device_put(jnp.arange(B * 5.0).reshape(B, 5),
                     batch_sharding(2, axis_type="Explicit"))

  def f(x):
    _checks.values("loss", "x", x < 42, "must be below 42", x)
    return x

  out = jax.eval_shape(f, x)
  assert out.sharding.spec == x.sharding.spec
  with pytest.raises(jaxloss.CheckError, match=r"loss: x must be below 42; "
                     r"first offending element x\[8, 2\] = 42"):
    jaxloss.checked(jax.jit(f))(x)


def test_ntxent_on_explicit_axes_equals_the_unsharded_loss():
  # Its in-batch negatives need the whole batch: gathered for the columns of
  # the similarity matrix, where explicit axes give the product no rule.
  args = catalogue.inputs("ntxent", B)
  sharded = shard("ntxent", args, axis_type="Explicit")
  got = jax.jit(jax.value_and_grad(jaxloss.ntxent))(*sharded)
  want = jax.value_and_grad(jaxloss.ntxent)(*args)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-7)
