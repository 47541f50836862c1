"""Torch parity cases for ``ctc_loss``: optax's interface, torch's numbers.

``torch.nn.functional.ctc_loss`` takes time-first log-probabilities and
lengths; the torch side here converts the logits and paddings of
``jaxloss.ctc_loss`` to that form and reduces over the batch the way the
functional API does (``"mean"`` over sequences, not torch's division by the
target lengths, which :class:`jaxloss.nn.CTCLoss` covers).
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss
from torch_golden import Case

rng = np.random.default_rng(4)
B, T, K, N = 5, 10, 6, 4
REDUCTIONS = ("none", "mean", "sum")

logits = rng.normal(0, 2, (B, T, K))
input_lengths = np.array([10, 7, 10, 3, 8])
target_lengths = np.array([4, 2, 0, 2, 4])
labels = rng.integers(1, K, (B, N))
labels[0] = [3, 3, 1, 3]                          # repeat: needs a blank
labels[4] = [2, 5, 5, 2]
labels[np.arange(N)[None, :] >= target_lengths[:, None]] = -1  # padding
frame_pad = (np.arange(T)[None, :] >= input_lengths[:, None]).astype(float)
label_pad = (np.arange(N)[None, :] >= target_lengths[:, None]).astype(float)
logits[frame_pad == 1] = 1e3                      # ignored, whatever it is


def _torch(blank):
  def fn(torch, logits, logit_paddings, labels, label_paddings):
    log_probs = logits.log_softmax(-1).transpose(0, 1)
    losses = torch.nn.functional.ctc_loss(
        log_probs, labels.clamp(min=0), (1 - logit_paddings).sum(1).long(),
        (1 - label_paddings).sum(1).long(), blank=blank, reduction="none")
    return torch.cat([losses, losses.mean()[None], losses.sum()[None]])
  return fn


def _jax(blank, log_epsilon):
  @jax.jit
  def fn(logits, logit_paddings, labels, label_paddings):
    return jnp.concatenate([jnp.reshape(jaxloss.ctc_loss(
        logits, logit_paddings, labels, label_paddings, blank_id=blank,
        log_epsilon=log_epsilon, reduction=red), -1) for red in REDUCTIONS])
  return fn


inputs = {"logits": logits, "logit_paddings": frame_pad, "labels": labels,
          "label_paddings": label_pad}
blank_last = np.where(labels >= 0, labels - 1, -1)   # classes 0..K-2
infeasible = labels.copy()
infeasible[3, :2] = [4, 4]                        # 3 frames for 4, _, 4: ok
infeasible[1, :2] = [2, 2]
input_short = frame_pad.copy()
input_short[1, 2:] = 1.0                          # 2 frames for 2, _, 2: inf

CASES = [
    Case("blank0", _torch(0), _jax(0, -1e5), inputs, grad=("logits",)),
    # Values only from here: the gradients are the function's above.
    Case("blank-last-exact", _torch(K - 1), _jax(K - 1, -np.inf),
         {**inputs, "labels": blank_last}),
    # An impossible alignment: torch's inf, exact with log_epsilon=-inf
    # (torch's gradient of an infinite loss is NaN, here 0).
    Case("infeasible-exact", _torch(0), _jax(0, -np.inf),
         {**inputs, "labels": infeasible, "logit_paddings": input_short}),
]
