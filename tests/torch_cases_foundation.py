"""Torch parity cases for BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, NLLLoss."""

import itertools

import numpy as np

import jaxloss
from torch_golden import Case

REDUCTIONS = ("none", "mean", "sum")
rng = np.random.default_rng(0)
N, C = 6, 4

probs = rng.uniform(0.02, 0.98, (N, C))
probs[0, 0], probs[1, 1] = 0.0, 1.0   # the -100 clamp, both branches
binary = rng.integers(0, 2, (N, C)).astype(np.float64)
binary[0, 0], binary[1, 1] = 1.0, 0.0
soft = rng.uniform(0, 1, (N, C))
logits = rng.normal(0, 3, (N, C))
logits[2, 2] = 40.0
elem_weight = rng.uniform(0.5, 2.0, (N, C))
pos_weight = rng.uniform(0.5, 3.0, (C,))
class_weight = rng.uniform(0.5, 2.0, (C,))
labels = rng.integers(0, C, (N,))
labels_ignored = labels.copy()
labels_ignored[[1, 4]] = -100
log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
logits_3d = rng.normal(0, 2, (3, C, 5))            # torch's (N, C, d1)
labels_3d = rng.integers(0, C, (3, 5))
labels_3d[0, :2] = -100
prob_targets = rng.dirichlet(np.ones(C), N)

CASES = []

for red, w in itertools.product(REDUCTIONS, (False, True)):
  kw = {"weight": elem_weight} if w else {}
  CASES.append(Case(
      f"bce-{red}-w{int(w)}",
      lambda torch, p, y, w=w, red=red, **k: torch.nn.BCELoss(
          weight=k.get("weight"), reduction=red)(p, y),
      lambda p, y, w=w, red=red, **k: jaxloss.binary_cross_entropy(
          p, y, weight=k.get("weight"), reduction=red),
      {"p": probs, "y": soft if red == "sum" else binary, **kw},
      grad=("p",)))  # torch: d/dy is inf at p in {0, 1}, here the clamped slope

for red, w, pw in itertools.product(REDUCTIONS, (False, True), (False, True)):
  kw = {}
  if w:
    kw["weight"] = elem_weight
  if pw:
    kw["pos_weight"] = pos_weight
  CASES.append(Case(
      f"bce_logits-{red}-w{int(w)}-pw{int(pw)}",
      lambda torch, x, y, red=red, **k: torch.nn.BCEWithLogitsLoss(
          weight=k.get("weight"), pos_weight=k.get("pos_weight"),
          reduction=red)(x, y),
      lambda x, y, red=red, **k: jaxloss.sigmoid_binary_cross_entropy(
          x, y, weight=k.get("weight"), pos_weight=k.get("pos_weight"),
          reduction=red),
      {"x": logits, "y": soft, **kw}, grad=("x", "y")))

# torch's OpInfo layouts: 0-d inputs; weights and pos_weight broadcasting
# to the input (torch wants the target's shape equal to the input's).
CASES.append(Case(
    "bce-0d",
    lambda torch, p, y: torch.nn.functional.binary_cross_entropy(
        p, y, reduction="none"),
    lambda p, y: jaxloss.binary_cross_entropy(p, y),
    {"p": np.array(0.3), "y": np.array(1.0)}, grad=("p",)))
CASES.append(Case(
    "bce-broadcast-weight",
    lambda torch, p, y, w: torch.nn.functional.binary_cross_entropy(
        p, y, weight=w, reduction="none"),
    lambda p, y, w: jaxloss.binary_cross_entropy(p, y, weight=w),
    {"p": probs, "y": soft, "w": elem_weight[:, :1]}, grad=("p",)))
CASES.append(Case(
    "bce_logits-0d",
    lambda torch, x, y: torch.nn.functional.binary_cross_entropy_with_logits(
        x, y, reduction="none"),
    lambda x, y: jaxloss.sigmoid_binary_cross_entropy(x, y),
    {"x": np.array(-1.5), "y": np.array(0.25)}, grad=("x", "y")))
CASES.append(Case(
    "bce_logits-broadcast-weights",
    lambda torch, x, y, w, pw:
    torch.nn.functional.binary_cross_entropy_with_logits(
        x, y, weight=w, pos_weight=pw, reduction="none"),
    lambda x, y, w, pw: jaxloss.sigmoid_binary_cross_entropy(
        x, y, weight=w, pos_weight=pw),
    {"x": logits, "y": soft, "w": elem_weight[0], "pw": pos_weight[None, :1]},
    grad=("x", "y")))

for red, w, ignore, ls in itertools.product(
    REDUCTIONS, (False, True), (False, True), (0.0, 0.2)):
  kw = {"weight": class_weight} if w else {}
  CASES.append(Case(
      f"ce-{red}-w{int(w)}-ig{int(ignore)}-ls{ls}",
      lambda torch, x, t, red=red, ls=ls, **k: torch.nn.CrossEntropyLoss(
          weight=k.get("weight"), reduction=red, label_smoothing=ls)(x, t),
      lambda x, t, red=red, ls=ls, **k:
      jaxloss.softmax_cross_entropy_with_integer_labels(
          x, t, weight=k.get("weight"), ignore_index=-100, reduction=red,
          label_smoothing=ls),
      {"x": logits, "t": labels_ignored if ignore else labels, **kw},
      grad=("x",)))

for red, w, ls in itertools.product(REDUCTIONS, (False, True), (0.0, 0.1)):
  kw = {"weight": class_weight} if w else {}
  CASES.append(Case(
      f"ce_kdim-{red}-w{int(w)}-ls{ls}",
      lambda torch, x, t, red=red, ls=ls, **k: torch.nn.CrossEntropyLoss(
          weight=k.get("weight"), reduction=red, label_smoothing=ls)(x, t),
      lambda x, t, red=red, ls=ls, **k:
      jaxloss.softmax_cross_entropy_with_integer_labels(
          x, t, axis=1, weight=k.get("weight"), ignore_index=-100,
          reduction=red, label_smoothing=ls),
      {"x": logits_3d, "t": labels_3d, **kw}, grad=("x",)))

for red, w, ls in itertools.product(REDUCTIONS, (False, True), (0.0, 0.3)):
  kw = {"weight": class_weight} if w else {}
  CASES.append(Case(
      f"ce_probs-{red}-w{int(w)}-ls{ls}",
      lambda torch, x, y, red=red, ls=ls, **k: torch.nn.CrossEntropyLoss(
          weight=k.get("weight"), reduction=red, label_smoothing=ls)(x, y),
      lambda x, y, red=red, ls=ls, **k: jaxloss.softmax_cross_entropy(
          x, y, weight=k.get("weight"), reduction=red, label_smoothing=ls),
      {"x": logits, "y": prob_targets, **kw}, grad=("x", "y")))

for red, w, ignore in itertools.product(REDUCTIONS, (False, True),
                                        (False, True)):
  kw = {"weight": class_weight} if w else {}
  CASES.append(Case(
      f"nll-{red}-w{int(w)}-ig{int(ignore)}",
      lambda torch, lp, t, red=red, **k: torch.nn.NLLLoss(
          weight=k.get("weight"), reduction=red)(lp, t),
      lambda lp, t, red=red, **k: jaxloss.nll_loss(
          lp, t, weight=k.get("weight"), ignore_index=-100, reduction=red),
      {"lp": log_probs, "t": labels_ignored if ignore else labels, **kw},
      grad=("lp",)))

for red in REDUCTIONS:
  CASES.append(Case(
      f"nll_kdim-{red}",
      lambda torch, lp, t, red=red: torch.nn.NLLLoss(reduction=red)(lp, t),
      lambda lp, t, red=red: jaxloss.nll_loss(
          lp, t, axis=1, ignore_index=-100, reduction=red),
      {"lp": logits_3d, "t": labels_3d}, grad=("lp",)))
