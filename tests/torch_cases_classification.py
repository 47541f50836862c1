"""Torch parity cases for the margin losses of torch.nn.functional."""

import jax.numpy as jnp
import numpy as np

import jaxloss
from torch_golden import Case

rng = np.random.default_rng(3)
N, C = 5, 4

scores = rng.normal(0, 1.5, (N, C))
scores[0, 1] = scores[0, 0] + 1.0 - 1e-3    # near the margin, not on it
targets = rng.integers(0, C, (N,))
class_weight = rng.uniform(0.5, 2.0, (C,))
signs = rng.choice([-1.0, 1.0], (N, C))
soft = rng.uniform(0, 1, (N, C))
multilabel = np.array([[3, 0, -1, 1],       # classes 3 and 0; the 1 is ignored
                       [1, -1, -1, -1],
                       [0, 1, 2, 3],        # every class: no pair, loss 0
                       [2, 2, -1, 0],       # a class listed twice counts twice
                       [-1, 0, 1, 2]])      # no class
binary_targets = rng.integers(0, 2, (N, C)).astype(np.float64)

CASES = []

# Each option in both states, each reduction, in few cases.
for red, p, margin, w in [("none", 1, 1.0, False), ("none", 1, 1.0, True),
                          ("mean", 1, 0.5, True), ("sum", 2, 1.0, True),
                          ("mean", 2, 0.5, False), ("none", 2, 1.0, False)]:
  kw = {"weight": class_weight} if w else {}
  CASES.append(Case(
      f"multi_margin-{red}-p{p}-m{margin}-w{int(w)}",
      lambda torch, x, t, red=red, p=p, margin=margin, **k:
      torch.nn.MultiMarginLoss(p=p, margin=margin, weight=k.get("weight"),
                               reduction=red)(x, t),
      lambda x, t, red=red, p=p, margin=margin, **k:
      jaxloss.multi_margin_loss(x, t, p=p, margin=margin,
                                weight=k.get("weight"), reduction=red),
      {"x": scores, "t": targets, **kw}, grad=("x",)))

CASES.append(Case(
    "multi_margin-unbatched",
    lambda torch, x, t: torch.nn.functional.multi_margin_loss(
        x, t, reduction="none"),
    lambda x, t: jaxloss.multi_margin_loss(x, t),
    {"x": scores[1], "t": targets[1]}, grad=("x",)))

for red in ("none", "mean"):
  CASES.append(Case(
      f"multilabel_margin-{red}",
      lambda torch, x, t, red=red: torch.nn.MultiLabelMarginLoss(
          reduction=red)(x, t),
      lambda x, t, red=red: jaxloss.multilabel_margin_loss(
          x, t, reduction=red),
      {"x": scores, "t": multilabel}, grad=("x",)))

CASES.append(Case(
    "multilabel_margin-unbatched",
    lambda torch, x, t: torch.nn.functional.multilabel_margin_loss(
        x, t, reduction="none"),
    lambda x, t: jaxloss.multilabel_margin_loss(x, t),
    {"x": scores[0], "t": multilabel[0]}, grad=("x",)))

for red in ("none", "mean"):
  CASES.append(Case(
      f"soft_margin-{red}",
      lambda torch, x, y, red=red: torch.nn.SoftMarginLoss(reduction=red)(
          x, y),
      lambda x, y, red=red: jaxloss.soft_margin_loss(x, y, reduction=red),
      {"x": scores * 3, "y": signs}, grad=("x",)))

for red, w, target in [("none", False, "binary"), ("mean", True, "soft"),
                       ("sum", True, "binary")]:
  kw = {"weight": class_weight} if w else {}
  CASES.append(Case(
      f"multilabel_soft_margin-{red}-w{int(w)}-{target}",
      lambda torch, x, y, red=red, **k: torch.nn.MultiLabelSoftMarginLoss(
          weight=k.get("weight"), reduction=red)(x, y),
      lambda x, y, red=red, **k: jaxloss.multilabel_soft_margin_loss(
          x, y, weight=k.get("weight"), reduction=red),
      {"x": scores * 3, "y": binary_targets if target == "binary" else soft,
       **kw}, grad=("x", "y")))

CASES.append(Case(
    "multilabel_soft_margin-unbatched",
    lambda torch, x, y: torch.nn.functional.multilabel_soft_margin_loss(
        x, y, reduction="none"),
    lambda x, y: jaxloss.multilabel_soft_margin_loss(x, y),
    {"x": scores[2], "y": soft[2]}, grad=("x",)))

# torch's OpInfo layouts: a 0-d input (one class), a (C,) input with a (1,)
# target (a batch of one), targets broadcast over the batch.
CASES.append(Case(
    "multi_margin-0d",
    lambda torch, x, t: torch.nn.functional.multi_margin_loss(
        x, t, reduction="none"),
    lambda x, t: jaxloss.multi_margin_loss(x, t),
    {"x": np.array(0.7), "t": np.array(0)}, grad=("x",)))

CASES.append(Case(
    "multi_margin-vector-batch-of-one",
    lambda torch, x, t, w: torch.nn.functional.multi_margin_loss(
        x, t, p=2, margin=0.5, weight=w, reduction="none"),
    lambda x, t, w: jaxloss.multi_margin_loss(x, t, p=2, margin=0.5,
                                              weight=w),
    {"x": scores[1], "t": targets[1:2], "w": class_weight}, grad=("x",)))

CASES.append(Case(
    "multi_margin-negative-margin",
    lambda torch, x, t: torch.nn.functional.multi_margin_loss(
        x, t, margin=-0.4, reduction="none"),
    lambda x, t: jaxloss.multi_margin_loss(x, t, margin=-0.4),
    {"x": scores, "t": targets}, grad=("x",)))

CASES.append(Case(
    "multilabel_margin-0d",
    lambda torch, x, t: torch.nn.functional.multilabel_margin_loss(
        x, t, reduction="none"),
    lambda x, t: jaxloss.multilabel_margin_loss(x, t),
    {"x": np.array(0.7), "t": np.array(0)}, grad=("x",)))

CASES.append(Case(
    "soft_margin-broadcast-targets",
    lambda torch, x, y, y1: torch.cat([
        torch.nn.functional.soft_margin_loss(x, y, reduction="none")[0],
        torch.nn.functional.soft_margin_loss(x, y1, reduction="none")[1],
        torch.nn.functional.soft_margin_loss(x[0, 0], y1[0, 0],
                                             reduction="none")[None]]),
    lambda x, y, y1: jnp.concatenate([
        jaxloss.soft_margin_loss(x, y)[0], jaxloss.soft_margin_loss(x, y1)[1],
        jaxloss.soft_margin_loss(x[0, 0], y1[0, 0])[None]]),
    {"x": scores * 3, "y": signs[0], "y1": signs[:, :1]}, grad=("x",)))

CASES.append(Case(
    "multilabel_soft_margin-broadcast-targets",
    lambda torch, x, y, w: torch.nn.functional.multilabel_soft_margin_loss(
        x, y, weight=w, reduction="none"),
    lambda x, y, w: jaxloss.multilabel_soft_margin_loss(x, y, weight=w),
    {"x": scores * 3, "y": soft[0], "w": class_weight[:1]},
    grad=("x", "y")))
