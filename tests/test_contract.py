"""The input contract, catalogue-wide: no silent broadcast, empty batches.

A loss's element shape is its predictions' shape. Targets, weights and masks
may broadcast to it, batch axes included, but never enlarge it; a class axis
must match. Driven by ``jaxloss.names()`` and the inputs of
``tests/catalogue.py``: an argument whose catalogue shape is the first
argument's is an elementwise target, one with the first argument's shape
less its last axis a per-row label. A loss is covered the day it is
registered.
"""

import dataclasses
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import catalogue
import jaxloss

NAMES = jaxloss.names()
B = 3
# optax's Dice layouts: predictions without a channel axis against targets
# with one of size 1 are binary maps, not an enlargement.
CHANNEL_RULE = {"binary_dice_loss", "dice_loss",
                "multiclass_generalized_dice_loss"}


def _params(name):
  return list(inspect.signature(jaxloss.get(name)).parameters)


def _targets(name):
  """``[(index, "element" | "row")]`` of the arguments that follow the first."""
  specs = catalogue.SPECS[name][0]
  first = specs[0][1]
  out = []
  for i, (_, shape) in enumerate(specs[1:], 1):
    if shape == first:
      out.append((i, "element"))
    elif first[:1] == ("B",) and len(first) >= 2 and shape == first[:-1]:
      out.append((i, "row"))
  return out


def _call(name, args, **kwargs):
  out = catalogue.loss(name)(*args, **kwargs)
  return out[0] if isinstance(out, tuple) else out


def _raises_naming(name, what, shapes, call):
  with pytest.raises(ValueError) as info:
    call()
  message = str(info.value)
  assert message.startswith(f"{name}: "), message
  assert what in message, message
  for shape in shapes:
    assert str(tuple(shape)) in message, message


@pytest.mark.parametrize("name", [n for n in NAMES if _targets(n)])
def test_a_target_never_enlarges_the_predictions(name):
  # [N] predictions against [N, 1] targets (and the like) is an error in
  # both directions, never an [N, N] broadcast.
  args = catalogue.inputs(name, B)
  params = _params(name)
  def enlarged(a):
    # A new axis of length 1 (inside, for the Dice channel rule).
    return a[:, None] if name in CHANNEL_RULE else a[..., None]

  for i, _ in _targets(name):
    bad = list(args)
    bad[i] = enlarged(args[i])
    _raises_naming(name, params[i], [bad[i].shape],
                   lambda bad=bad: _call(name, bad))
  if any(relation == "element" for _, relation in _targets(name)):
    # Predictions with an axis more than their targets: the first target
    # that does not fit is named, beside the predictions' shape. (The Dice
    # channel rule gives the target its channel axis first.)
    bad = list(args)
    bad[0] = enlarged(args[0])
    shapes = [] if name in CHANNEL_RULE else [bad[0].shape]
    _raises_naming(name, params[0], shapes, lambda: _call(name, bad))


@pytest.mark.parametrize("name", [n for n in NAMES if _targets(n)])
def test_targets_broadcast_along_the_batch_as_if_explicit(name):
  args = catalogue.inputs(name, B)
  for i, _ in _targets(name):
    one = list(args)
    one[i] = args[i][:1]
    explicit = list(one)
    explicit[i] = jnp.broadcast_to(one[i], args[i].shape)
    np.testing.assert_allclose(_call(name, one), _call(name, explicit),
                               rtol=1e-6, err_msg=f"argument {i}")


@pytest.mark.parametrize("name", [n for n in NAMES
                                  if {"where", "weight"} & set(_params(n))])
def test_masks_and_weights_never_enlarge_the_loss(name):
  args = catalogue.inputs(name, B)
  shape = args[0].shape + (1,)
  for keyword, value in (("where", jnp.ones(shape, bool)),
                         ("weight", jnp.ones(shape))):
    if keyword in _params(name):
      _raises_naming(name, keyword, [shape],
                     lambda k=keyword, v=value: _call(name, args, **{k: v}))


def _reductions(name):
  p = inspect.signature(jaxloss.get(name)).parameters.get("reduction")
  if p is None or p.default is None:
    return [{}]
  return [dict(reduction=r) for r in ("none", "sum", "mean")]


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_batch_costs_nothing(name):
  # 0 for a mean or a sum over nothing, an empty array per element; zero,
  # finite gradients. Never NaN.
  args = catalogue.inputs(name, 0)
  floating = jnp.issubdtype(args[0].dtype, jnp.floating)
  for kwargs in _reductions(name):
    out = _call(name, args, **kwargs)
    assert np.all(np.isfinite(np.asarray(out))), (kwargs, out)
    assert out.size == 0 or np.all(np.asarray(out) == 0), (kwargs, out)
    if floating:
      grad = jax.grad(lambda x, kw=kwargs: jnp.sum(
          _call(name, (x,) + args[1:], **kw)))(args[0])
      assert grad.shape == args[0].shape
      assert not np.any(np.asarray(grad)), (kwargs, grad)


def _class_axis_losses():
  out = []
  for name in NAMES:
    specs = catalogue.SPECS[name][0]
    if ("axis" in _params(name) and len(specs) == 2
        and specs[0][1] == ("B", catalogue.C)
        and "axis" not in catalogue.SPECS[name][1]
        and specs[1][1] in (("B", catalogue.C), ("B",))):
      out.append(name)
  return out


@pytest.mark.parametrize("name", _class_axis_losses())
def test_tuple_class_axes_flatten_in_the_order_given(name):
  # Logits [B, 2, 3] with axis=(2, 1): the class index runs over axis 1
  # fastest, as optax flattens them (and as a transpose then reshape does).
  rng = np.random.default_rng(4)
  (kind0, _), (kind1, shape1) = catalogue.SPECS[name][0]
  flat = [np.asarray(catalogue.draw(kind0, (B, 6), rng))]
  if shape1 == ("B",):
    flat.append(rng.integers(0, 6, (B,)).astype(np.int32))
  else:
    flat.append(np.asarray(catalogue.draw(kind1, (B, 6), rng)))

  def unflatten(a):
    return a.reshape(B, 3, 2).transpose(0, 2, 1)
  given = [unflatten(flat[0])] + [
      unflatten(flat[1]) if flat[1].ndim == 2 else flat[1]]
  arrays = [[jnp.asarray(a, jnp.int32 if a.dtype.kind in "iu"
                         else jnp.float32) for a in group]
            for group in (flat, given)]
  try:
    got = _call(name, arrays[1], axis=(2, 1))
  except TypeError as e:
    # A loss whose axis is a single axis says so.
    assert f"{name}: axis must be" in str(e)
    return
  want = _call(name, arrays[0], axis=-1)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_tuple_axes_example_from_optax():
  # optax and a hand computation give [3.287, 2.232]; reading the axes in
  # sorted order gave [2.883, 1.601].
  logits = jnp.arange(24.0).reshape(2, 3, 4) % 5 - 2.0
  labels = jnp.array([7, 2])
  flat = jnp.transpose(logits, (0, 2, 1)).reshape(2, 12)
  want = -jax.nn.log_softmax(flat)[jnp.arange(2), labels]
  for implementation in ("auto", "reference"):
    got = jaxloss.softmax_cross_entropy_with_integer_labels(
        logits, labels, axis=(2, 1), implementation=implementation)
    np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(
      jaxloss.nll_loss(jax.nn.log_softmax(logits, axis=(1, 2)), labels,
                       axis=(2, 1)), want, rtol=1e-6)


# Integer labels of any dtype: a class count or ignore_index the labels' dtype
# cannot hold must not wrap around into it.
MANY = 300
INTEGER_KINDS = ("int", "ctc_labels", "multilabel")
INTEGER_LABELS = [n for n in NAMES if any(
    kind in INTEGER_KINDS for kind, _ in catalogue.SPECS[n][0])]


def _many_classes(name, dtype, seed=0, classes=MANY):
  """``name``'s arguments with ``classes`` classes (for the catalogue's
  ``C``) and integer labels over all of them that ``dtype`` holds."""
  rng = np.random.default_rng(seed)
  top = max(min(classes, int(jnp.iinfo(dtype).max) + 1), 1)
  args = []
  for kind, shape in catalogue.SPECS[name][0]:
    shape = tuple(B if s == "B" else classes if s == catalogue.C else s
                  for s in shape)
    if kind == "int":
      x = rng.integers(0, top, shape)
    elif kind == "ctc_labels":
      x = rng.integers(1, top + 1, shape)
    elif kind == "multilabel":
      x = np.full(shape, -1)
      for row in np.ndindex(shape[:-1]):
        x[row][:3] = rng.permutation(top)[:min(3, shape[-1])]
    else:
      x = (catalogue.draw(kind, shape, rng) if math.prod(shape)
           else np.zeros(shape))
      args.append(jnp.asarray(x, jnp.float32))
      continue
    args.append(jnp.asarray(x, jnp.int32))
  return args


def test_integer_label_losses_are_found():
  assert {"softmax_cross_entropy_with_integer_labels", "nll_loss", "ctc_loss",
          "multilabel_margin_loss"} <= set(INTEGER_LABELS)


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.uint8, jnp.int16, jnp.uint32])
@pytest.mark.parametrize("name", INTEGER_LABELS)
def test_integer_labels_of_any_dtype_give_the_int32_numbers(name, dtype):
  if "multilabel" in [k for k, _ in catalogue.SPECS[name][0]] and not (
      jnp.issubdtype(dtype, jnp.signedinteger)):
    pytest.skip("torch's multilabel layout needs -1")
  args = _many_classes(name, dtype)
  narrow = [a.astype(dtype) if a.dtype == jnp.int32 else a for a in args]
  want = _call(name, args)
  assert np.all(np.isfinite(want))
  np.testing.assert_allclose(_call(name, narrow), want, rtol=1e-6)


IGNORING = [n for n in INTEGER_LABELS if "ignore_index" in _params(n)]


@pytest.mark.parametrize("name", IGNORING)
def test_an_ignore_index_the_labels_cannot_hold_ignores_nothing(name):
  # torch's -100 is 156 in uint8 and 2**32 - 100 in uint32; 2**32 - 100 is
  # -100 in int32. None of them may drop a row.
  args = _many_classes(name, jnp.uint8)
  label = next(i for i, a in enumerate(args) if a.dtype == jnp.int32)
  args[label] = args[label].at[0].set(156)
  want = _call(name, args)
  for dtype, ignore_index in ((jnp.uint8, -100), (jnp.uint32, -100),
                              (jnp.int32, 2**32 + 156)):
    narrow = list(args)
    narrow[label] = args[label].astype(dtype)
    np.testing.assert_allclose(
        _call(name, narrow, ignore_index=ignore_index), want, rtol=1e-6)
  assert IGNORING


def test_cross_entropy_module_keeps_class_156_of_uint8_targets():
  logits = jnp.zeros((2, 200))
  loss = jaxloss.nn.CrossEntropyLoss(reduction="none")(
      logits, jnp.array([3, 156], jnp.uint8))
  np.testing.assert_allclose(loss, np.log(200), rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_nested_python_lists_read_as_arrays(name):
  # Valid input is never rejected: lists, as NumPy reads them.
  args = catalogue.inputs(name, 2)
  want = catalogue.loss(name)(*args)
  got = catalogue.loss(name)(*(np.asarray(a).tolist() for a in args))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)


SWITCHES = [(n, p.name) for n in NAMES
            for p in inspect.signature(jaxloss.get(n)).parameters.values()
            if isinstance(p.default, bool)]


@pytest.mark.parametrize("name, switch", SWITCHES)
def test_switches_are_bools_not_truthy_values(name, switch):
  args = catalogue.inputs(name, 2)
  with pytest.raises(TypeError, match=rf"^{name}: {switch} must be a bool, "
                     r"got 'no'"):
    jaxloss.get(name)(*args, **{**catalogue.SPECS[name][1], switch: "no"})


MODULE_SWITCHES = [
    (c, f.name) for c in (getattr(jaxloss.nn, n) for n in jaxloss.nn.__all__)
    if dataclasses.is_dataclass(c)
    for f in dataclasses.fields(c) if isinstance(f.default, bool)]


@pytest.mark.parametrize("cls, switch", MODULE_SWITCHES,
                         ids=[f"{c.__name__}-{s}" for c, s in MODULE_SWITCHES])
def test_module_switches_are_bools_even_when_traced(cls, switch):
  for value in ("no", jnp.asarray(True)):
    with pytest.raises(TypeError, match=rf"^{cls.__name__}: {switch} must "
                       "be a bool"):
      cls(**{switch: value})


def test_switches_are_found():
  # The two tests above are parametrized by what they find: an empty list
  # would run nothing.
  assert len(SWITCHES) >= 5 and len(MODULE_SWITCHES) >= 5


@pytest.mark.parametrize("name", NAMES)
def test_no_class_at_all_is_a_named_error_or_a_number(name):
  # The catalogue's class axis (C) at length 0: a loss computes (an empty
  # sum) or says which function refuses it, never a bare NumPy error.
  args = _many_classes(name, jnp.int32, classes=0)
  try:
    out = _call(name, args)
  except ValueError as e:
    assert str(e).startswith(f"{name}: "), e
  else:
    assert all(np.asarray(leaf).dtype.kind == "f"
               for leaf in jax.tree.leaves(out))
