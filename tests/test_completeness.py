"""Nothing missing: every optax loss and every torch.nn loss class.

Every public name of ``optax.losses`` must exist in jaxloss and accept the
same call: the same positional parameters in the same order (so that
replacing ``optax.losses.X`` by ``jaxloss.X`` changes nothing), every optax
parameter with its default, and nothing new without a default. Every loss
class of ``torch.nn`` must exist in ``jaxloss.nn`` with torch's constructor
parameters, names, order and defaults, less the deprecated ``size_average``
and ``reduce``. Without torch, the committed ``TORCH_LOSSES`` stands in for
it; with torch, it must agree with torch.
"""

import inspect
import math

import optax
import pytest

import jaxloss

P = inspect.Parameter
POSITIONAL = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
DEPRECATED_ARGS = ("size_average", "reduce")

# torch 2.13's loss classes: constructor parameters and defaults, without
# self, size_average and reduce.
TORCH_LOSSES = {
    "BCELoss": (("weight", None), ("reduction", "mean")),
    "BCEWithLogitsLoss": (("weight", None), ("reduction", "mean"),
                          ("pos_weight", None)),
    "CTCLoss": (("blank", 0), ("reduction", "mean"),
                ("zero_infinity", False)),
    "CosineEmbeddingLoss": (("margin", 0.0), ("reduction", "mean")),
    "CrossEntropyLoss": (("weight", None), ("ignore_index", -100),
                         ("reduction", "mean"), ("label_smoothing", 0.0)),
    "GaussianNLLLoss": (("full", False), ("eps", 1e-06),
                        ("reduction", "mean")),
    "HingeEmbeddingLoss": (("margin", 1.0), ("reduction", "mean")),
    "HuberLoss": (("reduction", "mean"), ("delta", 1.0)),
    "KLDivLoss": (("reduction", "mean"), ("log_target", False)),
    "L1Loss": (("reduction", "mean"),),
    "MSELoss": (("reduction", "mean"),),
    "MarginRankingLoss": (("margin", 0.0), ("reduction", "mean")),
    "MultiLabelMarginLoss": (("reduction", "mean"),),
    "MultiLabelSoftMarginLoss": (("weight", None), ("reduction", "mean")),
    "MultiMarginLoss": (("p", 1), ("margin", 1.0), ("weight", None),
                        ("reduction", "mean")),
    "NLLLoss": (("weight", None), ("ignore_index", -100),
                ("reduction", "mean")),
    "PoissonNLLLoss": (("log_input", True), ("full", False), ("eps", 1e-08),
                       ("reduction", "mean")),
    "SmoothL1Loss": (("reduction", "mean"), ("beta", 1.0)),
    "SoftMarginLoss": (("reduction", "mean"),),
    "TripletMarginLoss": (("margin", 1.0), ("p", 2.0), ("eps", 1e-06),
                          ("swap", False), ("reduction", "mean")),
    "TripletMarginWithDistanceLoss": (("distance_function", None),
                                      ("margin", 1.0), ("swap", False),
                                      ("reduction", "mean")),
}

# Classes named *Loss whose constructor needs arguments: layers that own
# parameters (a Linear projection, adaptive clusters), not stateless losses.
# LinearCrossEntropyLoss is new in torch 2.13.
TORCH_LAYERS = ("AdaptiveLogSoftmaxWithLoss", "LinearCrossEntropyLoss")

# Layers jaxloss.nn mirrors without their parameters: the class takes the
# options of the torch.nn.functional function the layer calls, and the
# projection is an argument of the call, as in that function. Options and
# defaults (torch's ignore_index=None means -100 for class indices, which is
# jaxloss's default; for probability targets both mean none).
TORCH_FUNCTIONAL = {
    "LinearCrossEntropyLoss": (
        "linear_cross_entropy", ("input", "linear_weight", "target"),
        # The constructor's order, which may differ from the functional's.
        (("weight", None), ("reduction", "mean"), ("ignore_index", -100),
         ("label_smoothing", 0.0))),
}


def _same_default(a, b):
  if isinstance(a, bool) or isinstance(b, bool):
    return type(a) is type(b) and a == b
  if a is None or b is None:
    return a is b
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
    return math.isnan(b)
  try:
    return bool(a == b)
  except (TypeError, ValueError):
    return False


def signature_problems(theirs, ours):
  """Why a call to ``theirs`` could fail or change meaning on ``ours``."""
  problems = []
  theirs = list(inspect.signature(theirs).parameters.values())
  ours_list = list(inspect.signature(ours).parameters.values())
  ours = {p.name: p for p in ours_list}
  positional = [p for p in theirs if p.kind in POSITIONAL]
  our_positional = [p for p in ours_list if p.kind in POSITIONAL]
  if ([p.name for p in our_positional[:len(positional)]]
      != [p.name for p in positional]):
    problems.append(
        f"positional parameters {[p.name for p in our_positional]}, "
        f"expected {[p.name for p in positional]} first")
  for p in theirs:
    if p.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
      if not any(q.kind == p.kind for q in ours_list):
        problems.append(f"no {p}")
      continue
    if p.name not in ours:
      problems.append(f"no parameter {p.name!r}")
      continue
    q = ours[p.name]
    if p.kind == P.KEYWORD_ONLY and q.kind == P.POSITIONAL_ONLY:
      problems.append(f"{p.name!r} is positional-only")
    if p.default is not P.empty and q.default is P.empty:
      problems.append(f"{p.name!r} is required, expected default "
                      f"{p.default!r}")
    elif p.default is not P.empty and not _same_default(p.default,
                                                        q.default):
      problems.append(f"{p.name}={q.default!r}, expected {p.default!r}")
  for q in ours_list:
    if (q.name not in {p.name for p in theirs} and q.default is P.empty
        and q.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)):
      problems.append(f"new required parameter {q.name!r}")
  return problems


OPTAX_NAMES = sorted(n for n in dir(optax.losses) if not n.startswith("_")
                     and callable(getattr(optax.losses, n)))


def test_optax_names_are_known():
  # optax 0.2.8: the list the issue names. A new optax name fails here first.
  assert len(OPTAX_NAMES) == 32, OPTAX_NAMES


@pytest.mark.parametrize("name", OPTAX_NAMES)
def test_every_optax_loss(name):
  assert hasattr(jaxloss, name), f"jaxloss lacks optax.losses.{name}"
  problems = signature_problems(getattr(optax.losses, name),
                                getattr(jaxloss, name))
  assert not problems, f"jaxloss.{name}: " + "; ".join(problems)


def _torch_losses(torch):
  """torch.nn's loss classes: names and constructor parameters."""
  from torch.nn.modules.loss import _Loss  # noqa: PLC0415
  out, layers = {}, []
  for name in sorted(dir(torch.nn)):
    cls = getattr(torch.nn, name)
    if not (name.endswith("Loss") and inspect.isclass(cls)):
      continue
    if (getattr(cls, "__deprecated__", None)
        or ".. deprecated::" in (cls.__doc__ or "")):
      continue
    params = [p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name not in ("self", *DEPRECATED_ARGS)]
    if (not issubclass(cls, _Loss)
        or any(p.default is P.empty for p in params)):
      layers.append(name)
      continue
    out[name] = tuple((p.name, p.default) for p in params)
  return out, layers


def _our_constructor(name):
  params = inspect.signature(getattr(jaxloss.nn, name)).parameters.values()
  return tuple((p.name, p.default) for p in params)


@pytest.mark.parametrize("name", sorted(TORCH_LOSSES))
def test_every_torch_loss_class(name):
  assert hasattr(jaxloss.nn, name), f"jaxloss.nn lacks {name}"
  ours, theirs = _our_constructor(name), TORCH_LOSSES[name]
  assert [n for n, _ in ours] == [n for n, _ in theirs], name
  for (n, ours_default), (_, default) in zip(ours, theirs):
    assert _same_default(ours_default, default), (name, n, ours_default)


@pytest.mark.parametrize("name", sorted(TORCH_FUNCTIONAL))
def test_every_torch_layer_without_its_parameters(name):
  assert hasattr(jaxloss.nn, name), f"jaxloss.nn lacks {name}"
  _, call, options = TORCH_FUNCTIONAL[name]
  assert _our_constructor(name) == options
  params = inspect.signature(getattr(jaxloss.nn, name).__call__).parameters
  assert list(params)[1:len(call) + 1] == list(call)


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(TORCH_FUNCTIONAL))
def test_torch_layer_options_are_its_functions(name):
  """The options are the functional's keywords, the call its positional
  parameters, the defaults the same but for ignore_index (None there)."""
  torch = pytest.importorskip("torch")
  function, call, options = TORCH_FUNCTIONAL[name]
  params = inspect.signature(
      getattr(torch.nn.functional, function)).parameters
  assert [n for n, p in params.items() if p.kind in POSITIONAL] == list(call)
  for n, default in options:
    expected = params[n].default
    if n == "ignore_index":
      assert expected is None
    else:
      assert _same_default(default, expected), (n, default, expected)
  layer = inspect.signature(getattr(torch.nn, name)).parameters
  assert {n for n, _ in options} <= set(layer)


def test_no_other_classes_in_nn():
  assert sorted(jaxloss.nn.__all__) == sorted({**TORCH_LOSSES,
                                               **TORCH_FUNCTIONAL})


@pytest.mark.torch
def test_static_list_is_torch():
  torch = pytest.importorskip("torch")
  losses, layers = _torch_losses(torch)
  assert set(layers) <= set(TORCH_LAYERS), (
      f"new torch.nn layers named *Loss to review: {layers}")
  assert losses == TORCH_LOSSES


def test_same_default_is_strict_about_values():
  assert _same_default(1.0, 1) and _same_default(None, None)
  assert not _same_default(-100, None)
  assert not _same_default(False, 0) and not _same_default(0.0, False)
  assert _same_default(float("nan"), float("nan"))


def test_signature_problems_catch_each_kind():
  def optax_like(predictions, targets=None, axis=-1, *, delta=1.0):
    del predictions, targets, axis, delta

  def keyword_axis(predictions, targets=None, *, axis=-1, delta=1.0):
    del predictions, targets, axis, delta

  def required_targets(predictions, targets, axis=-1, *, delta=1.0):
    del predictions, targets, axis, delta

  def other_delta(predictions, targets=None, axis=-1, *, delta=2.0,
                  reduction="none"):
    del predictions, targets, axis, delta, reduction

  def new_required(predictions, targets=None, axis=-1, *, delta=1.0, w):
    del predictions, targets, axis, delta, w

  assert not signature_problems(optax_like, optax_like)
  assert "positional" in signature_problems(optax_like, keyword_axis)[0]
  assert signature_problems(optax_like, required_targets) == [
      "'targets' is required, expected default None"]
  assert signature_problems(optax_like, other_delta) == [
      "delta=2.0, expected 1.0"]
  assert signature_problems(optax_like, new_required) == [
      "new required parameter 'w'"]
