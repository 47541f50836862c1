"""Torch parity cases for torch.nn.functional.kl_div and KLDivLoss."""

import numpy as np

import jaxloss
from torch_golden import Case

rng = np.random.default_rng(4)
N, C = 4, 5

log_predictions = np.log(rng.dirichlet(np.ones(C), N))
targets = rng.dirichlet(np.ones(C), N)
targets_with_zeros = targets.copy()
targets_with_zeros[0, 1] = targets_with_zeros[2, 4] = 0.0
log_targets = np.log(targets)
unnormalized = rng.uniform(0.1, 2.0, (N, C))

CASES = []

for red, log_target in [("none", False), ("none", True), ("mean", False),
                        ("sum", False), ("batchmean", False),
                        ("batchmean", True)]:
  t = log_targets if log_target else targets
  CASES.append(Case(
      f"kl_div-{red}-log{int(log_target)}",
      lambda torch, x, t, red=red, lt=log_target: torch.nn.KLDivLoss(
          reduction=red, log_target=lt)(x, t),
      lambda x, t, red=red, lt=log_target: jaxloss.kl_div(
          x, t, reduction=red, log_target=lt),
      {"x": log_predictions, "t": t}, grad=("x", "t")))

# Zero targets: torch's value is 0 there, and so is its gradient for the
# input; its gradient for the target is NaN (here 0), so it is not compared.
for red in ("none", "batchmean"):
  CASES.append(Case(
      f"kl_div-zero_targets-{red}",
      lambda torch, x, t, red=red: torch.nn.functional.kl_div(
          x, t, reduction=red),
      lambda x, t, red=red: jaxloss.kl_div(x, t, reduction=red),
      {"x": log_predictions, "t": targets_with_zeros}, grad=("x",)))

# Targets broadcast to the input's shape (torch broadcasts the other way
# too, which jaxloss rejects: the loss would take the target's shape).
CASES.append(Case(
    "kl_div-broadcast-target",
    lambda torch, x, t: torch.nn.functional.kl_div(x, t, reduction="none"),
    lambda x, t: jaxloss.kl_div(x, t),
    {"x": log_predictions, "t": targets[:1]}, grad=("x", "t")))

# 0-d: "batchmean" divides by 1.
for red in ("batchmean", "mean"):
  CASES.append(Case(
      f"kl_div-0d-{red}",
      lambda torch, x, t, red=red: torch.nn.functional.kl_div(
          x, t, reduction=red),
      lambda x, t, red=red: jaxloss.kl_div(x, t, reduction=red),
      {"x": log_predictions[1, 2], "t": targets[1, 2]}, grad=("x", "t")))

CASES.append(Case(
    "kl_div-unnormalized-sum",
    lambda torch, x, t: torch.nn.functional.kl_div(x, t, reduction="sum"),
    lambda x, t: jaxloss.kl_div(x, t, reduction="sum"),
    {"x": log_predictions, "t": unnormalized}, grad=("x", "t")))

CASES.append(Case(
    "kl_divergence-rows",
    lambda torch, x, t: torch.nn.functional.kl_div(
        x, t, reduction="none").sum(-1),
    lambda x, t: jaxloss.kl_divergence(x, t),
    {"x": log_predictions, "t": targets}, grad=("x", "t")))

CASES.append(Case(
    "kl_divergence_with_log_targets-rows",
    lambda torch, x, t: torch.nn.functional.kl_div(
        x, t, reduction="none", log_target=True).sum(-1),
    lambda x, t: jaxloss.kl_divergence_with_log_targets(x, t),
    {"x": log_predictions, "t": log_targets}, grad=("x", "t")))
