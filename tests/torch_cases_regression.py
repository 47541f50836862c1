"""Torch parity cases for the regression losses: L1, MSE (weighted too),
SmoothL1, Huber, PoissonNLL and GaussianNLL."""

import itertools

import numpy as np

import jaxloss
from torch_golden import Case

REDUCTIONS = ("none", "mean", "sum")
rng = np.random.default_rng(3)
N, D = 5, 3

x = rng.normal(0, 2, (N, D))
y = rng.normal(0, 2, (N, D))
y[0, 0] = x[0, 0]                                  # a zero error
elem_weight = rng.uniform(0.0, 2.0, (N, D))
log_rate = rng.normal(0, 1, (N, D))
rate = rng.uniform(0.1, 4.0, (N, D))
counts = rng.integers(0, 6, (N, D)).astype(np.float64)
counts[0, :3] = [0.0, 1.0, 2.0]                    # around the Stirling cut
counts_positive = counts + 0.5                     # finite torch d/dtarget
var_full = rng.uniform(0.2, 3.0, (N, D))
var_full[1, 1] = 1e-8                              # below the clamp
var_row = rng.uniform(0.2, 3.0, (N,))              # one fewer dimension
var_last1 = rng.uniform(0.2, 3.0, (N, 1))          # last dimension 1
x_4d = rng.normal(0, 1, (2, 3, 2, 2))
y_4d = rng.normal(0, 1, (2, 3, 2, 2))
var_4d = rng.uniform(0.2, 3.0, (2, 1, 2, 2))       # one middle dimension 1

CASES = []

for red, w in itertools.product(REDUCTIONS, (False, True)):
  kw = {"w": elem_weight} if w else {}
  CASES.append(Case(
      f"l1-{red}-w{int(w)}",
      lambda torch, x, y, red=red, **k: torch.nn.functional.l1_loss(
          x, y, reduction=red, weight=k.get("w")),
      lambda x, y, red=red, **k: jaxloss.l1_loss(
          x, y, reduction=red, weight=k.get("w")),
      {"x": x, "y": y, **kw}, grad=("x", "y", *kw)))
  CASES.append(Case(
      f"mse-{red}-w{int(w)}",
      lambda torch, x, y, red=red, **k: torch.nn.functional.mse_loss(
          x, y, reduction=red, weight=k.get("w")),
      lambda x, y, red=red, **k: jaxloss.mse_loss(
          x, y, reduction=red, weight=k.get("w")),
      {"x": x, "y": y, **kw}, grad=("x", "y", *kw)))

for red, beta in [("none", 0.0), ("none", 0.5), ("none", 2.5), ("mean", 1.0),
                  ("sum", 1.0)]:
  CASES.append(Case(
      f"smooth_l1-{red}-beta{beta}",
      lambda torch, x, y, red=red, beta=beta: torch.nn.SmoothL1Loss(
          reduction=red, beta=beta)(x, y),
      lambda x, y, red=red, beta=beta: jaxloss.smooth_l1_loss(
          x, y, beta=beta, reduction=red),
      {"x": x, "y": y}, grad=("x", "y")))

for red, delta in [("none", 0.5), ("none", 3.0), ("mean", 1.0), ("sum", 1.0)]:
  CASES.append(Case(
      f"huber-{red}-delta{delta}",
      lambda torch, x, y, red=red, delta=delta: torch.nn.HuberLoss(
          reduction=red, delta=delta)(x, y),
      lambda x, y, red=red, delta=delta: jaxloss.huber_loss(
          x, y, delta=delta, reduction=red),
      {"x": x, "y": y}, grad=("x", "y")))

POISSON = [("none", li, full) for li in (True, False) for full in (False, True)]
POISSON += [("mean", True, True), ("sum", False, True)]
for red, log_input, full in POISSON:
  CASES.append(Case(
      f"poisson_nll-{red}-log{int(log_input)}-full{int(full)}",
      lambda torch, x, y, red=red, li=log_input, full=full:
      torch.nn.PoissonNLLLoss(log_input=li, full=full, reduction=red)(x, y),
      lambda x, y, red=red, li=log_input, full=full: jaxloss.poisson_nll_loss(
          x, y, log_input=li, full=full, reduction=red),
      {"x": log_rate if log_input else rate, "y": counts}, grad=("x",)))

# torch's d/dtarget of the Stirling term is NaN at target 0: compare it where
# the targets are positive, and at zero targets without the term.
for red, log_input, full in [("none", True, True), ("none", False, True),
                             ("mean", False, False), ("none", False, False),
                             ("sum", True, False)]:
  CASES.append(Case(
      f"poisson_nll_dtarget-{red}-log{int(log_input)}-full{int(full)}",
      lambda torch, x, y, red=red, li=log_input, full=full:
      torch.nn.functional.poisson_nll_loss(
          x, y, log_input=li, full=full, eps=1e-3, reduction=red),
      lambda x, y, red=red, li=log_input, full=full: jaxloss.poisson_nll_loss(
          x, y, log_input=li, full=full, eps=1e-3, reduction=red),
      {"x": log_rate if log_input else rate,
       "y": counts_positive if full else counts}, grad=("x", "y")))

GAUSSIAN_VARS = {"full": var_full, "row": var_row, "last1": var_last1}
GAUSSIAN = [("none", v, full) for v in GAUSSIAN_VARS for full in (False, True)]
GAUSSIAN += [("mean", "row", False), ("sum", "last1", True)]
for red, vname, full in GAUSSIAN:
  var = GAUSSIAN_VARS[vname]
  CASES.append(Case(
      f"gaussian_nll-{red}-var_{vname}-full{int(full)}",
      lambda torch, x, y, v, red=red, full=full: torch.nn.GaussianNLLLoss(
          full=full, reduction=red)(x, y, v),
      lambda x, y, v, red=red, full=full: jaxloss.gaussian_nll_loss(
          x, y, v, full=full, reduction=red),
      {"x": x, "y": y, "v": var}, grad=("x", "y", "v")))

for red, eps in [("none", 1e-6), ("none", 0.5), ("mean", 1e-6)]:
  CASES.append(Case(
      f"gaussian_nll_4d-{red}-eps{eps}",
      lambda torch, x, y, v, red=red, eps=eps:
      torch.nn.functional.gaussian_nll_loss(x, y, v, eps=eps, reduction=red),
      lambda x, y, v, red=red, eps=eps: jaxloss.gaussian_nll_loss(
          x, y, v, eps=eps, reduction=red),
      {"x": x_4d, "y": y_4d, "v": var_4d}, grad=("x", "y", "v")))

# Complex L1 (torch's L1Loss takes it): the modulus of the error, real, with
# gradients in the real and imaginary parts, free of either library's
# convention for complex gradients. One error is zero.
xi = rng.normal(0, 2, (N, D))
yi = rng.normal(0, 2, (N, D))
yi[0, 0] = xi[0, 0]
for red in REDUCTIONS:
  CASES.append(Case(
      f"l1_complex-{red}",
      lambda torch, xr, xi, yr, yi, red=red: torch.nn.functional.l1_loss(
          torch.complex(xr, xi), torch.complex(yr, yi), reduction=red),
      lambda xr, xi, yr, yi, red=red: jaxloss.l1_loss(
          xr + 1j * xi, yr + 1j * yi, reduction=red),
      {"xr": x, "xi": xi, "yr": y, "yi": yi}, grad=("xr", "xi", "yr", "yi")))
CASES.append(Case(
    "l1_complex_real_target",
    lambda torch, xr, xi, yr: torch.nn.functional.l1_loss(
        torch.complex(xr, xi), yr, reduction="none"),
    lambda xr, xi, yr: jaxloss.l1_loss(xr + 1j * xi, yr),
    {"xr": x, "xi": xi, "yr": y}, grad=("xr", "xi", "yr")))

# 0-d inputs and targets that broadcast to the input's shape, from torch's
# OpInfo samples.
x0, y0 = rng.normal(0, 2, (2,))
ELEMENTWISE_0D = {
    "l1": (lambda torch: torch.nn.functional.l1_loss, jaxloss.l1_loss),
    "mse": (lambda torch: torch.nn.functional.mse_loss, jaxloss.mse_loss),
    "smooth_l1": (lambda torch: torch.nn.functional.smooth_l1_loss,
                  jaxloss.smooth_l1_loss),
    "huber": (lambda torch: torch.nn.functional.huber_loss,
              jaxloss.huber_loss),
}
for name, (torch_f, jax_f) in ELEMENTWISE_0D.items():
  CASES.append(Case(
      f"{name}-0d",
      lambda torch, x, y, torch_f=torch_f: torch_f(torch)(
          x, y, reduction="sum"),
      lambda x, y, jax_f=jax_f: jax_f(x, y, reduction="sum"),
      {"x": np.array(x0), "y": np.array(y0)}, grad=("x", "y")))

x5 = rng.normal(0, 2, (5,))
x55 = rng.normal(0, 2, (5, 5))
GAUSSIAN_OPINFO = {
    "target1-var0d": (x5, rng.normal(0, 2, (1,)), np.array(0.7)),
    "target0d-var1": (x5, np.array(0.3), np.array([1.3])),
    "square-target_row-var_row": (x55, rng.normal(0, 2, (5,)),
                                  rng.uniform(0.2, 2.0, (5,))),
    "square-target_col-var_col": (x55, rng.normal(0, 2, (5, 1)),
                                  rng.uniform(0.2, 2.0, (5, 1))),
}
for name, (gx, gy, gv) in GAUSSIAN_OPINFO.items():
  CASES.append(Case(
      f"gaussian_nll_opinfo-{name}",
      lambda torch, x, y, v: torch.nn.functional.gaussian_nll_loss(
          x, y, v, reduction="none"),
      lambda x, y, v: jaxloss.gaussian_nll_loss(x, y, v),
      {"x": gx, "y": gy, "v": gv}, grad=("x", "y", "v")))
