"""The tutorial's example, in JAX: ``jaxloss article``.

The tutorial builds a small CNN in PyTorch, runs it on a random batch of
three 3x512x512 images with targets [1, 1, 0], and computes the loss two
ways: ``BCELoss`` on ``sigmoid(logits)`` and ``BCEWithLogitsLoss`` on the
logits. Both give about 0.69. This module does the same with jaxloss, then
shows the inputs where the two ways part.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss
from jaxloss.train import model as model_lib

TARGETS = (1.0, 1.0, 0.0)
# (logit, label) pairs where float32 sigmoid saturates, plus one that does
# not (5, 0) for contrast.
SATURATED = ((5.0, 0.0), (20.0, 0.0), (40.0, 0.0), (120.0, 0.0),
             (-50.0, 1.0), (-120.0, 1.0))


def prob_form(logits, labels, **kwargs):
  """The tutorial's first way: ``BCELoss(sigmoid(logits), labels)``."""
  return jaxloss.binary_cross_entropy(jaxloss.sigmoid(logits), labels,
                                      **kwargs)


def logit_form(logits, labels, **kwargs):
  """The second way: ``BCEWithLogitsLoss(logits, labels)``."""
  return jaxloss.sigmoid_binary_cross_entropy(logits, labels, **kwargs)


@jax.jit
def _compute(params, images):
  spec = model_lib.Spec.article(in_channels=3, num_outputs=1)
  targets = jnp.array(TARGETS, jnp.float32)
  logits = model_lib.apply(params, images, spec)
  results = {"logits": logits, "targets": targets}
  for name, fn in (("prob", prob_form), ("logit", logit_form)):
    loss, grad = jax.value_and_grad(
        lambda x, fn=fn: fn(x, targets, reduction="mean"))(logits)
    results[f"{name}_loss"] = loss
    results[f"{name}_grad"] = grad

  x = jnp.array([s[0] for s in SATURATED], jnp.float32)
  y = jnp.array([s[1] for s in SATURATED], jnp.float32)
  results["saturated_logits"] = x
  results["saturated_labels"] = y
  results["saturated_sigmoid"] = jaxloss.sigmoid(x)
  for name, fn in (("prob", prob_form), ("logit", logit_form)):
    results[f"saturated_{name}_loss"] = fn(x, y)
    results[f"saturated_{name}_grad"] = jax.vmap(jax.grad(fn))(x, y)
  return results


def run(seed=0, size=512):
  """Runs the example; returns its numbers as a dict of NumPy values.

  The images are NumPy's standard normal draws for ``seed`` (as the
  tutorial's ``torch.randn``); the model is initialised from
  ``jax.random.PRNGKey(seed)``.
  """
  if not isinstance(size, int) or size < 1:
    raise ValueError(f"--size expected a positive int, got {size}")
  images = np.random.default_rng(seed).standard_normal(
      (3, 3, size, size), np.float32)
  spec = model_lib.Spec.article(in_channels=3, num_outputs=1)
  params = model_lib.init_params(jax.random.PRNGKey(seed), spec)
  results = jax.device_get(_compute(params, images))
  results = {k: np.asarray(v) for k, v in results.items()}
  for key in ("saturated_prob_grad", "saturated_logit_grad"):
    results[key] = results[key] + 0.0  # -0.0 prints as 0
  results["prob_loss"] = float(results["prob_loss"])
  results["logit_loss"] = float(results["logit_loss"])
  return {"seed": seed, "size": size, **results}


def _vector(v, fmt="{:+.5f}"):
  return "[" + ", ".join(fmt.format(float(e)) for e in v) + "]"


def report(r):
  """The text ``jaxloss article`` prints for the results of :func:`run`."""
  s = r["size"]
  difference = abs(r["prob_loss"] - r["logit_loss"])
  lines = [
      "The tutorial's model in JAX, without Flax:",
      f"  conv 3x3 (3 -> 10 channels, padding 1) -> average pool over the "
      f"whole {s}x{s} image",
      "  -> linear 10 -> 50 -> linear 50 -> 1",
      f"input: a random [3, 3, {s}, {s}] batch (NCHW, standard normal, seed "
      f"{r['seed']}); targets {_vector(r['targets'], '{:.0f}')}",
      f"logits: {_vector(r['logits'])}",
      "",
      "The loss both ways (mean over the batch):",
      f"  binary_cross_entropy(sigmoid(logits), y)   like BCELoss            "
      f"{r['prob_loss']:.7f}",
      f"  sigmoid_binary_cross_entropy(logits, y)    like BCEWithLogitsLoss  "
      f"{r['logit_loss']:.7f}",
      f"  difference {difference:.1e}: the same loss, up to float32 rounding",
      f"  gradient wrt the logits: {_vector(r['prob_grad'])} and "
      f"{_vector(r['logit_grad'])}",
      "",
      "Where the two ways part: saturated logits in float32",
      f"  {'logit':>7s} {'label':>5s} {'sigmoid(x)':>11s} "
      f"{'BCE(sigmoid(x))':>16s} {'BCEWithLogits(x)':>17s} "
      f"{'grad, prob':>11s} {'grad, logit':>12s}",
  ]
  for i in range(len(r["saturated_logits"])):
    lines.append(
        f"  {r['saturated_logits'][i]:7.0f} {r['saturated_labels'][i]:5.0f} "
        f"{r['saturated_sigmoid'][i]:11.4g} "
        f"{r['saturated_prob_loss'][i]:16.6g} "
        f"{r['saturated_logit_loss'][i]:17.6g} "
        f"{r['saturated_prob_grad'][i]:11.4g} "
        f"{r['saturated_logit_grad'][i]:12.4g}")
  i = [float(v) for v in r["saturated_logits"]].index(-50.0)
  lines += [
      "",
      "Where sigmoid(x) rounds to exactly 1 (x > ~16.6) or 0 (x < ~-87) in "
      "float32, the",
      "probability form has nothing left but its clamp: log is floored at "
      "-100, so the",
      "loss reads 100 whether the logit is 20 or 120, and its gradient is 0: "
      "the chain",
      "rule multiplies by sigmoid'(x) = sigmoid(x) (1 - sigmoid(x)) = 0.",
      f"At x = -50 the value is still right, but sigmoid'(x) = "
      f"{r['saturated_sigmoid'][i]:.1e} is under",
      f"the 1e-12 floor of BCELoss's backward: the gradient is "
      f"{r['saturated_prob_grad'][i]:.1e}, not -1.",
      "A confidently wrong model gets no signal to correct itself.",
      "",
      "The logit form computes log sigmoid(x) as -softplus(-x): the loss "
      "stays exact",
      "(20, 40, 120) and the gradient is sigmoid(x) - y, full size. Train "
      "with",
      "BCEWithLogitsLoss: jaxloss.sigmoid_binary_cross_entropy.",
  ]
  return "\n".join(lines)
