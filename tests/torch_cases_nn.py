"""Torch parity cases for every class of ``jaxloss.nn``, across its options.

Each case builds the same classes in ``torch.nn`` and ``jaxloss.nn`` with the
same constructor options and calls them on the same inputs, so the golden
file records torch's own denominators, clamps and broadcasting. A case runs
several variants (options, call arguments) under every reduction and
concatenates the results: one compilation covers them all.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss
from torch_golden import Case

REDUCTIONS = ("none", "mean", "sum")
rng = np.random.default_rng(3)
N, C, D = 5, 4, 3

CASES = []


def V(*call, **options):  # noqa: N802
  """A variant: the inputs named in ``call``, in order, and the options.

  An option given as ``Input("name")`` is the input of that name (an array
  option such as ``weight``).
  """
  return call, options


class Input(str):
  """Names a case input passed as a constructor option."""


def add(name, cls, inputs, variants, *, grad=(), reductions=REDUCTIONS):
  """Every variant of ``cls`` under every reduction, in both libraries.

  The jaxloss side runs under ``jax.jit``, the classes crossing it as
  closures over traced array options.
  """
  def run(lib, values, stack):
    outs = []
    for call, options in variants:
      options = {k: values[v] if isinstance(v, Input) else v
                 for k, v in options.items()}
      for red in reductions:
        loss = getattr(lib, cls)(**options, reduction=red)
        outs.append(loss(*[values[n] for n in call]).reshape(-1))
    return stack(outs)

  def torch_fn(torch, **t):
    return run(torch.nn, t, torch.cat)

  @jax.jit
  def jax_fn(**a):
    return run(jaxloss.nn, a, jnp.concatenate)

  CASES.append(Case(f"{cls}-{name}", torch_fn, jax_fn, dict(inputs),
                    tuple(grad)))


x = rng.normal(0, 1.5, (N, D))
y = rng.normal(0, 1.5, (N, D))
logits = rng.normal(0, 2, (N, C))
labels = rng.integers(0, C, (N,))
labels_ignored = labels.copy()
labels_ignored[[1, 3]] = -100
class_weight = rng.uniform(0.5, 2.0, (C,))
log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
probs_target = rng.dirichlet(np.ones(C), N)
signs = np.where(rng.uniform(size=N) < 0.5, -1.0, 1.0)
signs_nd = np.where(rng.uniform(size=(N, D)) < 0.5, -1.0, 1.0)
W = Input("w")

# -- Regression ---------------------------------------------------------------

pair = {"x": x, "y": y}
add("", "L1Loss", pair, [V("x", "y")], grad=("x", "y"))
add("", "MSELoss", pair, [V("x", "y")], grad=("x", "y"))
add("delta", "HuberLoss", pair,
    [V("x", "y"), V("x", "y", delta=2.5)], grad=("x", "y"))
add("beta", "SmoothL1Loss", pair,
    [V("x", "y", beta=b) for b in (0.5, 0.0)], grad=("x", "y"))

counts = rng.integers(0, 6, (N, D)).astype(np.float64)
counts[0, :3] = [0.0, 1.0, 2.0]                 # Stirling only where y > 1
add("log-input", "PoissonNLLLoss", {"x": x, "y": counts},
    [V("x", "y", full=f) for f in (False, True)], grad=("x",))
add("rate-input", "PoissonNLLLoss",
    {"x": rng.uniform(0.1, 4.0, (N, D)), "y": counts},
    [V("x", "y", log_input=False, full=False),
     V("x", "y", log_input=False, full=True),
     V("x", "y", log_input=False, eps=0.3)], grad=("x",))

var = rng.uniform(0.2, 2.0, (N, D))
var_small = var.copy()
var_small[0, 0] = 1e-9                          # below eps: clamped
add("full-eps", "GaussianNLLLoss", {"x": x, "y": y, "v": var_small},
    [V("x", "y", "v", full=False), V("x", "y", "v", full=True),
     V("x", "y", "v", eps=0.5)], grad=("x", "y", "v"))
add("broadcasting", "GaussianNLLLoss",
    {"x": x, "y": y, "y1": y[:, :1], "v": var, "v1": var[:, :1],
     "vrow": var[:, 0], "x0": x[0], "y0": y[0], "v0": var[0]},
    [V("x", "y", "v1"), V("x", "y", "vrow"), V("x", "y1", "v"),
     V("x0", "y0", "v0")],
    grad=("x", "y", "y1", "v", "v1", "vrow", "x0", "y0", "v0"))

# Complex input (torch's L1Loss takes it), by its real and imaginary parts.
# A generator of its own leaves the other cases' inputs as they were.
rng_complex = np.random.default_rng(13)
xi = rng_complex.normal(0, 1.5, (N, D))
yi = rng_complex.normal(0, 1.5, (N, D))


def _complex_l1(lib, complex_, cat):
  def run(xr, xi, yr, yi):
    x, y = complex_(xr, xi), complex_(yr, yi)
    return cat([lib.L1Loss(reduction=red)(x, y).reshape(-1)
                for red in REDUCTIONS])
  return run


CASES.append(Case(
    "L1Loss-complex",
    lambda torch, **t: _complex_l1(torch.nn, torch.complex, torch.cat)(**t),
    jax.jit(_complex_l1(jaxloss.nn, lambda r, i: r + 1j * i,
                        jnp.concatenate)),
    {"xr": x, "xi": xi, "yr": y, "yi": yi}, grad=("xr", "xi", "yr", "yi")))

# -- Classification -------------------------------------------------------------

# The functions have their own torch parity cases (foundation): here each
# option and layout goes through the class once.
add("indices", "CrossEntropyLoss",
    {"x": logits, "t": labels, "tig": labels_ignored, "w": class_weight},
    [V("x", "t"), V("x", "tig", weight=W, label_smoothing=0.2),
     V("x", "t", ignore_index=2)], grad=("x",))
logits_kdim = rng.normal(0, 2, (3, C, 2, 3))         # (N, C, d1, d2)
labels_kdim = rng.integers(0, C, (3, 2, 3))
labels_kdim[0, 0, :2] = -100
probs_kdim = np.moveaxis(rng.dirichlet(np.ones(C), (3, 2, 3)), -1, 1)
add("kdim", "CrossEntropyLoss",
    {"x": logits_kdim, "t": labels_kdim, "p": probs_kdim, "w": class_weight},
    [V("x", "t", weight=W, label_smoothing=0.1), V("x", "p")],
    grad=("x", "p"))
add("probabilities", "CrossEntropyLoss",
    {"x": logits, "p": probs_target, "w": class_weight},
    [V("x", "p", weight=W, label_smoothing=0.3)], grad=("x", "p"))
add("unbatched", "CrossEntropyLoss",
    {"x": logits[0], "t": labels[0], "p": probs_target[0], "w": class_weight},
    [V("x", "t"), V("x", "p", weight=W, label_smoothing=0.3)],
    grad=("x", "p"))

add("", "NLLLoss",
    {"x": log_probs, "t": labels, "tig": labels_ignored, "w": class_weight},
    [V("x", "tig", weight=W), V("x", "t", ignore_index=1)], grad=("x",))
add("kdim-unbatched", "NLLLoss",
    {"x": logits_kdim, "t": labels_kdim, "x0": log_probs[0], "t0": labels[0],
     "w": class_weight},
    [V("x", "t", weight=W), V("x0", "t0")],
    grad=("x", "x0"))

probs = rng.uniform(0.02, 0.98, (N, C))
probs[0, 0], probs[1, 1] = 0.0, 1.0             # torch's -100 clamp
binary = rng.integers(0, 2, (N, C)).astype(np.float64)
binary[0, 0], binary[1, 1] = 1.0, 0.0
add("", "BCELoss",
    {"p": probs, "y": binary, "w": rng.uniform(0.5, 2.0, (N, C)),
     "wrow": class_weight},
    [V("p", "y", weight=W), V("p", "y", weight=Input("wrow"))],
    grad=("p",))
add("", "BCEWithLogitsLoss",
    {"x": logits, "y": rng.uniform(0, 1, (N, C)),
     "w": rng.uniform(0.5, 2.0, (N, C)), "pw": rng.uniform(0.5, 3.0, (C,))},
    [V("x", "y"), V("x", "y", weight=W, pos_weight=Input("pw"))],
    grad=("x", "y"))

zero_target = probs_target.copy()
zero_target[0, 0] = 0.0                         # 0 log 0 = 0
add("", "KLDivLoss",
    {"x": log_probs, "t0": zero_target, "t": probs_target,
     "lt": np.log(probs_target)},
    [V("x", "t0"), V("x", "t"), V("x", "lt", log_target=True)],
    grad=("x", "t", "lt"), reductions=("none", "mean", "sum", "batchmean"))
# A target row broadcast to the input, and 0-d input and target.
add("broadcast-0d", "KLDivLoss",
    {"x": log_probs, "trow": probs_target[:1], "x0": log_probs[0, 1],
     "t0": probs_target[2, 1]},
    [V("x", "trow"), V("x0", "t0")], grad=("x", "trow", "x0", "t0"),
    reductions=("none", "mean", "sum", "batchmean"))

add("", "MarginRankingLoss", {"x1": x[:, 0], "x2": y[:, 0], "t": signs},
    [V("x1", "x2", "t", margin=m) for m in (0.0, 0.7)], grad=("x1", "x2"))
add("", "HingeEmbeddingLoss", {"x": np.abs(x) * 0.8, "t": signs_nd},
    [V("x", "t"), V("x", "t", margin=1.7)], grad=("x",))
add("", "CosineEmbeddingLoss",
    {"x1": x, "x2": y, "t": signs, "a0": x[0], "b0": y[0], "t0": signs[0]},
    [V("x1", "x2", "t"), V("x1", "x2", "t", margin=-0.5),
     V("x1", "x2", "t", margin=0.2), V("a0", "b0", "t0")],
    grad=("x1", "x2", "a0", "b0"))

ml_target = np.array([[3, 0, -1, 1], [1, 2, 3, 0], [-1, 0, 0, 0],
                      [2, -1, 3, 3], [0, 1, -1, -1]])
add("", "MultiLabelMarginLoss",
    {"x": logits, "t": ml_target, "x0": logits[0], "t0": ml_target[0]},
    [V("x", "t"), V("x0", "t0")], grad=("x", "x0"))
add("", "SoftMarginLoss", {"x": x, "t": signs_nd}, [V("x", "t")],
    grad=("x",))
add("", "MultiLabelSoftMarginLoss",
    {"x": logits, "t": rng.integers(0, 2, (N, C)).astype(np.float64),
     "w": class_weight},
    [V("x", "t"), V("x", "t", weight=W)], grad=("x",))
add("", "MultiMarginLoss",
    {"x": logits, "t": labels, "w": class_weight, "x0": logits[0],
     "t0": labels[0]},
    [V("x", "t"), V("x", "t", p=2, margin=0.4, weight=W), V("x0", "t0")],
    grad=("x", "x0"))

# torch's OpInfo layouts: 0-d inputs, a (C,) input with a (1,) target, a
# (1, C) input with a () target, targets and weights broadcasting.
add("layouts", "MultiMarginLoss",
    {"s": np.array(0.7), "st": np.array(0), "v": logits[1],
     "vt": labels[1:2], "m": logits[2:3], "mt": labels[2], "w": class_weight},
    [V("s", "st"), V("s", "vt"), V("v", "vt", p=2, margin=0.3, weight=W),
     V("v", "mt"), V("m", "mt")], grad=("s", "v", "m"))
add("layouts", "MultiLabelMarginLoss",
    {"s": np.array(0.7), "st": np.array(0), "st1": np.array([-1])},
    [V("s", "st"), V("s", "st1")], grad=("s",))
add("layouts", "BCELoss",
    {"p": np.array(0.3), "y": np.array(1.0), "pm": probs, "ym": binary,
     "w": class_weight},
    [V("p", "y"), V("pm", "ym", weight=W)], grad=("p", "pm"))
add("layouts", "BCEWithLogitsLoss",
    {"x": np.array(-1.5), "y": np.array(0.25), "xm": logits, "ym": probs,
     "w": np.linspace(0.5, 2.0, N)[:, None], "pw": np.array([1.7])},
    [V("x", "y"), V("xm", "ym", weight=W, pos_weight=Input("pw"))],
    grad=("x", "xm"))
add("layouts", "SoftMarginLoss",
    {"x": x, "t": signs_nd[0], "t1": signs_nd[:, :1], "x0": np.array(0.4),
     "t0": np.array(-1.0)},
    [V("x", "t"), V("x", "t1"), V("x0", "t0")], grad=("x", "x0"))
add("layouts", "MultiLabelSoftMarginLoss",
    {"x": logits, "t": (logits[0] > 0).astype(np.float64),
     "w": class_weight[:1]},
    [V("x", "t"), V("x", "t", weight=W)], grad=("x",))

# -- Embeddings -----------------------------------------------------------------

anchor = rng.normal(0, 1, (N, D))
positive = anchor + rng.normal(0, 0.5, (N, D))
negative = rng.normal(0, 1, (N, D))
triplet = {"a": anchor, "p": positive, "n": negative, "a0": anchor[0],
           "p0": positive[0], "n0": negative[0]}
add("", "TripletMarginLoss", triplet,
    [V("a", "p", "n"), V("a", "p", "n", p=1.0, swap=True, margin=0.3),
     V("a", "p", "n", p=3.0, eps=0.1), V("a0", "p0", "n0")],
    grad=("a", "p", "n", "a0", "p0", "n0"))

add("0d", "TripletMarginLoss",
    {"a": anchor[0, 0], "p": positive[0, 0], "n": negative[0, 0]},
    [V("a", "p", "n"), V("a", "p", "n", p=float("inf"), margin=0.4)],
    grad=("a", "p", "n"))


def _linf(u, v):
  """L-infinity distance, written once for torch tensors and jax arrays."""
  if isinstance(u, jax.Array):
    return abs(u - v).max(-1)
  return abs(u - v).max(-1).values


def _cosine_distance(u, v):
  dot = (u * v).sum(-1)
  norms = ((u * u).sum(-1) * (v * v).sum(-1)) ** 0.5
  return 1 - dot / norms


add("", "TripletMarginWithDistanceLoss", triplet,
    [V("a", "p", "n"), V("a", "p", "n", swap=True, margin=0.2),
     V("a", "p", "n", distance_function=_linf, swap=True, margin=1.5),
     V("a", "p", "n", distance_function=_cosine_distance)],
    grad=("a", "p", "n"))

# -- CTC -------------------------------------------------------------------------

T, B, K = 12, 5, 5
ctc_logits = rng.normal(0, 1.5, (T, B, K))
ctc_log_probs = ctc_logits - np.log(np.exp(ctc_logits).sum(-1, keepdims=True))
input_lengths = np.array([12, 9, 4, 12, 7])
target_lengths = np.array([4, 3, 3, 0, 5])
ctc_targets = rng.integers(1, K, (B, 5))
ctc_targets[0, :3] = [2, 2, 3]                  # a repeat needs a blank
ctc_targets[2, :3] = [1, 1, 1]                  # 5 frames needed, 4 given: inf
ctc_targets[4] = [1, 3, 4, 3, 3]                # 6 frames needed, 7 given
ctc = {"lp": ctc_log_probs, "t": ctc_targets, "il": input_lengths,
       "tl": target_lengths}
concatenated = np.concatenate([ctc_targets[b, :n]
                               for b, n in enumerate(target_lengths)])
add("padded-zero-infinity", "CTCLoss", ctc,
    [V("lp", "t", "il", "tl", zero_infinity=True)], grad=("lp",))
add("blank-last-unbatched", "CTCLoss",
    {"lp": ctc_log_probs[:, 0], "t": ctc_targets[0, :4] - 1,
     "il": np.array(11), "tl": np.array(4)},
    [V("lp", "t", "il", "tl", blank=K - 1)], grad=("lp",))
# Values only: the gradients above go through the same function, and torch's
# gradient of an infinite loss is NaN (here 0).
add("concatenated", "CTCLoss", {**ctc, "t": concatenated},
    [V("lp", "t", "il", "tl"), V("lp", "t", "il", "tl", zero_infinity=True)])
add("infinite", "CTCLoss", ctc, [V("lp", "t", "il", "tl")])
# Inputs torch accepts that jaxloss rejected before: floating targets
# (truncated), lengths of shape (1, N) and (N, 1), an unbatched input with a
# (1, S) target.
add("torch-layouts", "CTCLoss",
    {**ctc, "tf": ctc_targets + 0.5, "il2": input_lengths[None],
     "tl2": target_lengths[:, None], "lp0": ctc_log_probs[:, 4],
     "t0": ctc_targets[4:], "il0": input_lengths[4:],
     "tl0": target_lengths[4:]},
    [V("lp", "tf", "il", "tl", zero_infinity=True),
     V("lp", "t", "il2", "tl2", zero_infinity=True),
     V("lp0", "t0", "il0", "tl0")], grad=("lp", "lp0"))

# -- Linear cross entropy -----------------------------------------------------

# torch.nn.LinearCrossEntropyLoss owns its Linear layer; jaxloss.nn's takes
# the projection in the call, as torch.nn.functional.linear_cross_entropy:
# the torch side is that function, with the same options. A generator of its
# own leaves the other cases' inputs as they were.
rng_linear = np.random.default_rng(17)
H = rng_linear.normal(0, 1, (N, D))
LW = rng_linear.normal(0, 0.8, (C, D))                  # (C, in_features)
LB = rng_linear.normal(0, 1, (C,))
LW_kdim = rng_linear.normal(0, 0.8, (C, 2, 3, D))       # (C, d1, d2, D)
LB_kdim = rng_linear.normal(0, 1, (C, 2, 3))
linear_labels = rng_linear.integers(0, C, (N,))
linear_labels[1] = -100
linear_labels_kdim = rng_linear.integers(0, C, (N, 2, 3))
linear_labels_kdim[0, 1, :2] = 1
linear_probs = rng_linear.dirichlet(np.ones(C), N)
linear_probs[2] *= 0.5                                  # need not sum to 1
linear_probs_kdim = np.moveaxis(rng_linear.dirichlet(np.ones(C), (N, 2, 3)),
                                -1, 1)


def add_linear(name, inputs, variants, grad):
  """Variants ``(input, linear_weight, target, linear_bias or None,
  options, reductions)``: ``F.linear_cross_entropy`` against
  ``jaxloss.nn.LinearCrossEntropyLoss``, in one program (the options and
  layouts meet torch's own samples in test_opinfo.py too)."""
  def run(values, call, stack):
    outs = []
    for x, w, t, b, options, reductions in variants:
      options = {k: values[v] if isinstance(v, Input) else v
                 for k, v in options.items()}
      for red in reductions:
        out = call(values[x], values[w], values[t],
                   None if b is None else values[b], options, red)
        outs.append(out.reshape(-1))
    return stack(outs)

  def torch_fn(torch, **t):
    def call(x, w, target, b, options, red):
      return torch.nn.functional.linear_cross_entropy(
          x, w, target, linear_bias=b, reduction=red, **options)
    return run(t, call, torch.cat)

  @jax.jit
  def jax_fn(**a):
    def call(x, w, target, b, options, red):
      loss = jaxloss.nn.LinearCrossEntropyLoss(**options, reduction=red)
      return loss(x, w, target, linear_bias=b)
    return run(a, call, jnp.concatenate)

  CASES.append(Case(f"LinearCrossEntropyLoss-{name}", torch_fn, jax_fn,
                    dict(inputs), tuple(grad)))


add_linear("options-layouts",
           {"h": H, "lw": LW, "lb": LB, "t": linear_labels,
            "t2": np.where(linear_labels < 0, 2, linear_labels),
            "p": linear_probs, "h0": H[0], "t0": linear_labels[0],
            "p0": linear_probs[0], "lwk": LW_kdim, "lbk": LB_kdim,
            "tk": linear_labels_kdim, "pk": linear_probs_kdim,
            "w": class_weight},
           [("h", "lw", "t", "lb", dict(weight=W, label_smoothing=0.2),
             REDUCTIONS),
            ("h", "lw", "t2", None, dict(ignore_index=2), ("mean",)),
            ("h", "lw", "p", "lb", dict(weight=W, label_smoothing=0.3),
             REDUCTIONS),
            ("h0", "lw", "t0", None, {}, ("none",)),
            ("h0", "lw", "p0", "lb", dict(weight=W), ("mean",)),
            ("h", "lwk", "tk", "lbk", dict(weight=W, label_smoothing=0.1,
                                           ignore_index=1), ("mean",)),
            ("h", "lwk", "pk", None, dict(weight=W), ("none",))],
           grad=("h", "lw", "lb", "p", "h0", "p0", "lwk", "lbk", "pk"))
