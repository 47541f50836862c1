"""Float64 NumPy references, written from the definitions, not from jaxloss."""

import numpy as np


def logsumexp(x, axis=-1, where=None):
  x = np.asarray(x, np.float64)
  if where is not None:
    x = np.where(where, x, -np.inf)
  m = np.max(x, axis=axis, keepdims=True)
  m = np.where(np.isfinite(m), m, 0)
  with np.errstate(divide="ignore"):
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def log_sigmoid(x):
  x = np.asarray(x, np.float64)
  return np.where(x >= 0, -np.log1p(np.exp(-np.abs(x))),
                  x - np.log1p(np.exp(-np.abs(x))))


def reduce(loss, reduction, denominator=None):
  if reduction == "none":
    return loss
  total = np.sum(loss)
  if reduction == "sum":
    return total
  denominator = loss.size if denominator is None else np.sum(denominator)
  return total / denominator if denominator else 0.0


def binary_cross_entropy(p, y, weight=None, reduction="none"):
  p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
  with np.errstate(divide="ignore"):
    loss = -(y * np.maximum(np.log(p), -100)
             + (1 - y) * np.maximum(np.log(1 - p), -100))
  if weight is not None:
    loss = loss * weight
  return reduce(loss, reduction)


def sigmoid_binary_cross_entropy(x, y, pos_weight=None, weight=None,
                                 label_smoothing=0.0, reduction="none"):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  y = y * (1 - label_smoothing) + 0.5 * label_smoothing
  pw = 1.0 if pos_weight is None else pos_weight
  loss = -(pw * y * log_sigmoid(x) + (1 - y) * log_sigmoid(-x))
  if weight is not None:
    loss = loss * weight
  return reduce(loss, reduction)


def sigmoid_focal_loss(x, y, alpha=None, gamma=2.0, reduction="none"):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  p = 1 / (1 + np.exp(-x))
  ce = -(y * log_sigmoid(x) + (1 - y) * log_sigmoid(-x))
  p_t = p * y + (1 - p) * (1 - y)
  loss = ce * (1 - p_t) ** gamma
  if alpha is not None:
    loss = loss * (alpha * y + (1 - alpha) * (1 - y))
  return reduce(loss, reduction)


def softmax_cross_entropy_with_integer_labels(
    x, labels, weight=None, ignore_index=None, label_smoothing=0.0,
    z_loss=0.0, reduction="none"):
  """Rows of [N, C] logits; torch's CrossEntropyLoss plus z-loss."""
  x = np.asarray(x, np.float64)
  n, c = x.shape
  w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
  lse = logsumexp(x)
  loss = np.zeros(n)
  denominator = np.zeros(n)
  for i in range(n):
    t = labels[i]
    if ignore_index is not None and t == ignore_index:
      continue
    if not 0 <= t < c:
      loss[i] = np.nan
      denominator[i] = 1
      continue
    finite = x[i] > -np.inf
    smooth = np.sum(w[finite] * (lse[i] - x[i][finite])) / finite.sum()
    loss[i] = (w[t] * ((1 - label_smoothing) * (lse[i] - x[i, t])
                       + z_loss * lse[i]**2) + label_smoothing * smooth)
    denominator[i] = w[t]
  return reduce(loss, reduction, denominator)


def softmax_cross_entropy(x, y, weight=None, label_smoothing=0.0,
                          reduction="none"):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  c = x.shape[-1]
  y = y * (1 - label_smoothing) + label_smoothing / c
  w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
  logp = x - logsumexp(x)[..., None]
  terms = np.where(y * w == 0, 0.0, y * w * logp)
  return reduce(-terms.sum(-1), reduction)


def nll_loss(log_probs, labels, weight=None, ignore_index=None,
             reduction="none"):
  log_probs = np.asarray(log_probs, np.float64)
  n, c = log_probs.shape
  w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
  keep = (np.ones(n, bool) if ignore_index is None
          else labels != ignore_index)
  safe = np.where(keep, labels, 0)
  loss = np.where(keep, -w[safe] * log_probs[np.arange(n), safe], 0.0)
  return reduce(loss, reduction, np.where(keep, w[safe], 0.0))
