"""PyTorch's own OpInfo samples for every torch loss, recorded for jaxloss.nn.

``cd tests && PYTHONPATH=.. python torch_opinfo.py`` (torch and expecttest
installed: ``torch.testing._internal`` needs both) takes every OpInfo of
``torch.testing._internal.common_methods_invocations.op_db`` that is a loss
and runs its reference inputs (its sample inputs, plus the extra reference
inputs where it has them) and its error inputs through the
``torch.nn.functional`` function. It writes ``tests/golden/opinfo.json.gz``,
which ``tests/test_opinfo.py`` reads without torch. A record holds the
sample's arguments by name (tensors as dtype, shape and data, NaN as null,
complex as [re, im]; lengths lists; options; a ``PairwiseDistance`` as its
configuration) and either torch's value, the gradients of ``value.sum()``
with respect to the tensors the OpInfo marks differentiable (one input at a
time, so that one without a derivative, listed under ``no_grad``, does not
lose the others; gradients of more than ``GRAD_FULL`` elements as
projections on fixed random directions) and the warnings torch gave, or the
error torch raised, next to the one the OpInfo expects.

Which samples, deterministically (every generator seeded with ``SEED``):

* float64, and complex128 where the OpInfo lists complex dtypes;
* each sample has a layout (the shape, dtype and gradient flag of every
  tensor; lengths given as lists) and option values (``reduction``,
  ``margin``, ``ignore_index``, ...). The OpInfos draw the same layouts
  many times with fresh values; the file keeps a small set, chosen greedily
  in torch's order, in which every pair of values that torch's samples
  combine (a layout and an option, or two options) appears together at
  least once: 0-d, unbatched, (C,)/(1,) and K-dimensional layouts each meet
  every reduction, weight and ignore_index that torch tries them with. An
  op whose pairs would hold more than ``BUDGET`` numbers keeps every layout
  and every option value once instead: only ``ctc_loss`` (50 x 16 x 20
  log-probabilities a sample), 3 samples of 12;
* ``derived`` records: for each loss with elementwise targets, its first
  1-D sample with the target unsqueezed to (N, 1). torch broadcasts it
  (with its UserWarning for mse/l1/smooth_l1/huber) or raises: the case of
  jaxloss's shape contract, which torch's own samples never reach. Records
  of elementwise losses whose unreduced value is not shaped as their first
  argument say ``"enlarges": true``.
"""

import gzip
import inspect
import itertools
import json
import pathlib
import random
import sys
import warnings

import numpy as np

GOLDEN = pathlib.Path(__file__).parent / "golden" / "opinfo.json.gz"
SEED = 0
BUDGET = 20_000
# A gradient larger than this is recorded as its dot products with
# PROJECTIONS seeded Gaussian directions: a difference anywhere shows.
GRAD_FULL = 4096
PROJECTIONS = 8

# torch.nn.functional loss -> the torch.nn class jaxloss.nn mirrors.
CLASSES = {
    "binary_cross_entropy": "BCELoss",
    "binary_cross_entropy_with_logits": "BCEWithLogitsLoss",
    "cosine_embedding_loss": "CosineEmbeddingLoss",
    "cross_entropy": "CrossEntropyLoss",
    "ctc_loss": "CTCLoss",
    "gaussian_nll_loss": "GaussianNLLLoss",
    "hinge_embedding_loss": "HingeEmbeddingLoss",
    "huber_loss": "HuberLoss",
    "kl_div": "KLDivLoss",
    "l1_loss": "L1Loss",
    "linear_cross_entropy": "LinearCrossEntropyLoss",
    "margin_ranking_loss": "MarginRankingLoss",
    "mse_loss": "MSELoss",
    "multi_margin_loss": "MultiMarginLoss",
    "multilabel_margin_loss": "MultiLabelMarginLoss",
    "multilabel_soft_margin_loss": "MultiLabelSoftMarginLoss",
    "nll_loss": "NLLLoss",
    "poisson_nll_loss": "PoissonNLLLoss",
    "smooth_l1_loss": "SmoothL1Loss",
    "soft_margin_loss": "SoftMarginLoss",
    "triplet_margin_loss": "TripletMarginLoss",
    "triplet_margin_with_distance_loss": "TripletMarginWithDistanceLoss",
}

# Losses whose value has one element per element of the first argument:
# the other tensors must broadcast to its shape, never enlarge it.
ELEMENTWISE = (
    "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "gaussian_nll_loss", "hinge_embedding_loss", "huber_loss", "kl_div",
    "l1_loss", "margin_ranking_loss", "mse_loss", "poisson_nll_loss",
    "smooth_l1_loss", "soft_margin_loss",
)

# OpInfo variants left out, and why.
VARIANTS_LEFT_OUT = {
    ("linear_cross_entropy", "chunked"):
        "options=LinearCrossEntropyOptions(...) selects torch's chunking; "
        "the numbers are the unchunked variant's",
    ("linear_cross_entropy", "chunked_none"):
        "options=LinearCrossEntropyOptions(...) selects torch's chunking; "
        "the numbers are the unchunked variant's",
}

# torch's broadcast warning of mse/l1/smooth_l1/huber (torch/nn/functional.py).
BROADCAST_WARNING = "will likely lead to incorrect results due to broadcasting"


# -- Encoding (no torch needed) ---------------------------------------------


def _number(v):
  return None if v != v else v               # NaN -> null, as torch_golden


def encode_array(a):
  """``{"dtype", "shape", "data"}``; NaN as null, complex as [re, im]."""
  a = np.asarray(a)
  flat = a.ravel()
  if a.dtype.kind == "c":
    data = [[_number(v.real), _number(v.imag)] for v in flat.tolist()]
  elif a.dtype.kind == "f":
    data = [_number(v) for v in flat.tolist()]
  else:
    data = flat.tolist()
  return {"dtype": str(a.dtype), "shape": list(a.shape), "data": data}


def decode_array(d):
  def num(v):
    return np.nan if v is None else v
  if np.dtype(d["dtype"]).kind == "c":
    data = [complex(num(re), num(im)) for re, im in d["data"]]
  elif np.dtype(d["dtype"]).kind == "f":
    data = [num(v) for v in d["data"]]
  else:
    data = d["data"]
  return np.asarray(data, dtype=d["dtype"]).reshape(d["shape"])


def projections(shape):
  """The fixed random directions a large gradient is recorded along."""
  size = int(np.prod(shape))
  return np.random.default_rng(SEED).standard_normal((PROJECTIONS, size))


def encode_grad(g):
  g = np.asarray(g)
  if g.size <= GRAD_FULL:
    return encode_array(g)
  return {"shape": list(g.shape),
          "projections": encode_array(projections(g.shape) @ g.ravel())}


def decode_value(v):
  """An argument: arrays and lists of lengths tagged, the rest as is."""
  if isinstance(v, dict) and "dtype" in v:
    return decode_array(v)
  if isinstance(v, dict) and "list" in v:
    return list(v["list"])
  return v


def read(path=GOLDEN):
  """The golden file: ``{"torch", "ops", "records"}``."""
  with gzip.open(path, "rt") as f:
    return json.load(f)


# -- Generation (torch needed) -----------------------------------------------


def _short(op):
  return op.name.removeprefix("nn.functional.")


def _numpy(t):
  return t.detach().resolve_conj().numpy()


def _encode_arg(torch, v):
  """An argument as JSON, or raise ``_Unmapped`` with the reason."""
  if isinstance(v, torch.Tensor):
    return encode_array(_numpy(v))
  if isinstance(v, (list, tuple)):
    if all(isinstance(x, int) for x in v):
      return {"list": list(v)}
    raise _Unmapped(f"a {type(v).__name__} of non-integers")
  if v is None or isinstance(v, (bool, int, float, str)):
    return v
  if isinstance(v, torch.nn.PairwiseDistance):
    return {"callable": "pairwise_distance", "p": float(v.norm),
            "eps": float(v.eps), "keepdim": bool(v.keepdim)}
  if v is torch.nn.functional.pairwise_distance:
    return {"callable": "pairwise_distance", "p": 2.0, "eps": 1e-6,
            "keepdim": False}
  raise _Unmapped(f"{v!r} has no jaxloss.nn counterpart")


class _Unmapped(Exception):
  """An argument the harness cannot express for jaxloss."""


def _describe(torch, arguments):
  parts = []
  for name, v in arguments.items():
    if isinstance(v, torch.Tensor):
      dtype = str(v.dtype).removeprefix("torch.")
      parts.append(f"{name}={dtype}{tuple(v.shape)}")
    elif isinstance(v, (list, tuple)):
      parts.append(f"{name}=list[{len(v)}]")
    elif isinstance(v, torch.nn.Module):
      parts.append(f"{name}={type(v).__name__}()")
    else:
      parts.append(f"{name}={v!r}")
  return ", ".join(parts)


def _layout(torch, arguments):
  """The tensors' names, shapes, dtypes and gradient flags; list lengths."""
  key = []
  for name, v in arguments.items():
    if isinstance(v, torch.Tensor):
      key.append((name, tuple(v.shape), str(v.dtype), v.requires_grad))
    elif isinstance(v, (list, tuple)):
      key.append((name, "list", len(v)))
  return tuple(key)


def _options(torch, arguments):
  return tuple((name, repr(v)) for name, v in arguments.items()
               if not isinstance(v, (torch.Tensor, list, tuple)))


def _size(torch, arguments):
  return sum(v.numel() for v in arguments.values()
             if isinstance(v, torch.Tensor))


def _cover(samples, features):
  """Samples showing every feature: greedily, the most new ones first."""
  features = [set(f) for f in features]
  left = set().union(*features)
  chosen = []
  while left:
    best = max(range(len(samples)), key=lambda i: len(features[i] & left))
    chosen.append(best)
    left -= features[best]
  return [samples[i] for i in sorted(chosen)]


def select(torch, samples):
  """The samples recorded: see the module docstring."""
  kept, seen = [], set()
  for arguments in samples:
    key = (_layout(torch, arguments), _options(torch, arguments))
    if key not in seen:
      seen.add(key)
      kept.append(arguments)
  values = [[("layout", _layout(torch, a)), *_options(torch, a)]
            for a in kept]
  pairs = _cover(kept, [[*itertools.combinations(v, 2), *v] for v in values])
  if sum(_size(torch, a) for a in pairs) <= BUDGET:
    return pairs
  return _cover(kept, values)


def _bind(fn, sample):
  bound = inspect.signature(fn).bind(sample.input, *sample.args,
                                     **sample.kwargs)
  return dict(bound.arguments)


def _warnings(caught):
  out = []
  for w in caught:
    entry = {"category": w.category.__name__, "message": str(w.message)}
    if entry not in out:
      out.append(entry)
  return out


def _element_shape(torch, fn, arguments):
  """torch's unreduced output shape for the sample."""
  args = {**arguments, "reduction": "none"}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with torch.no_grad():
      return tuple(fn(**args).shape)


def _run(torch, fn, name, arguments):
  """torch's value, gradients and warnings, or the error it raised."""
  record = {}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      out = fn(**arguments)
    except Exception as e:  # noqa: BLE001  (any error torch raises)
      return {"error": {"type": type(e).__name__,
                        "message": str(e).strip()[:500]}}
  record["warnings"] = _warnings(caught)
  record["value"] = encode_array(_numpy(out))
  leaves = [n for n, v in arguments.items()
            if isinstance(v, torch.Tensor) and v.requires_grad]
  grads = {}
  for n in leaves:
    # One input at a time: torch implements no derivative for some
    # (``weight`` of binary_cross_entropy), and that must not lose the rest.
    try:
      out = fn(**arguments)
      (g,) = torch.autograd.grad(out.sum(), [arguments[n]],
                                 allow_unused=True)
    except RuntimeError as e:
      record.setdefault("no_grad", {})[n] = str(e).split("\n")[0]
      continue
    grads[n] = encode_grad(
        np.zeros(arguments[n].shape, _numpy(arguments[n]).dtype)
        if g is None else _numpy(g))
  record["grads"] = grads
  if name in ELEMENTWISE:
    first = next(iter(arguments.values()))
    if _element_shape(torch, fn, arguments) != tuple(first.shape):
      record["enlarges"] = True
  return record


def _record(torch, fn, name, kind, index, arguments, extra=None):
  record = {"id": f"{name}-{kind}{index}", "op": name, "kind": kind,
            "desc": _describe(torch, arguments)}
  try:
    record["args"] = {n: _encode_arg(torch, v) for n, v in arguments.items()}
  except _Unmapped as e:
    record["skip"] = str(e)
    return record
  record.update(extra or {})
  record.update(_run(torch, fn, name, arguments))
  return record


# What a record holds of torch's answer.
ANSWER = ("value", "grads", "no_grad", "warnings", "enlarges", "error")


def rerun(torch, record):
  """torch's answer again, from the record's own arguments."""
  differentiable = {*record.get("grads", ()), *record.get("no_grad", ())}
  arguments = {}
  for name, v in record["args"].items():
    v = decode_value(v)
    if isinstance(v, np.ndarray):
      v = torch.from_numpy(v.copy()).requires_grad_(name in differentiable)
    elif isinstance(v, dict):
      v = torch.nn.PairwiseDistance(p=v["p"], eps=v["eps"],
                                    keepdim=v["keepdim"])
    arguments[name] = v
  fn = getattr(torch.nn.functional, record["op"])
  return _run(torch, fn, record["op"], arguments)


def _seed(torch):
  torch.manual_seed(SEED)
  random.seed(SEED)
  np.random.seed(SEED)


def _loss_opinfos(op_db, torch):
  ops = []
  for op in op_db:
    name = _short(op)
    if not op.name.startswith("nn.functional."):
      continue
    if name not in CLASSES:
      cls = getattr(torch.nn, "".join(
          w.capitalize() for w in name.split("_")) + "Loss", None)
      if "loss" in name or "entropy" in name or cls is not None:
        sys.exit(f"torch_opinfo.py: OpInfo {op.name} looks like a loss; "
                 "add it to CLASSES")
      continue
    ops.append(op)
  missing = set(CLASSES) - {_short(op) for op in ops}
  if missing:
    sys.exit(f"torch_opinfo.py: no OpInfo for {sorted(missing)}")
  return ops


def _derived(torch, samples):
  """The first 1-D sample with its target unsqueezed to (N, 1)."""
  for arguments in samples:
    first = next(iter(arguments.values()))
    target = arguments.get("target")
    if (first.ndim == 1 and isinstance(target, torch.Tensor)
        and target.shape == first.shape):
      target = target.detach().unsqueeze(-1).requires_grad_(
          target.requires_grad)
      return {**arguments, "target": target}
  return None


def generate(torch, op_db):
  """The golden file's contents: ``{"torch", "seed", "budget", "ops",
  "records"}``, ``ops`` saying per loss how many samples torch drew and how
  many are recorded, and which OpInfo variants are left out and why."""
  records, ops_meta = [], {}
  functional = torch.nn.functional
  for op in _loss_opinfos(op_db, torch):
    name = _short(op)
    if op.variant_test_name:
      reason = VARIANTS_LEFT_OUT.get((name, op.variant_test_name))
      if reason is None:
        sys.exit(f"torch_opinfo.py: new variant {op.name}."
                 f"{op.variant_test_name}: record it or say why not")
      ops_meta[f"{name}.{op.variant_test_name}"] = {"left_out": reason}
      continue
    fn = getattr(functional, name)
    module = getattr(torch.nn, CLASSES[name])
    params = [p for p in inspect.signature(module.__init__).parameters
              if p != "self"]
    params += [p for p in inspect.signature(module.forward).parameters
               if p != "self"]
    dtypes = [torch.float64] + ([torch.complex128]
                                if torch.complex128 in op.dtypes else [])
    meta = {"class": CLASSES[name], "module_params": params, "samples": {}}
    index = 0
    for dtype in dtypes:
      _seed(torch)
      all_samples = [_bind(fn, s) for s in
                     op.reference_inputs("cpu", dtype, requires_grad=True)]
      kept = select(torch, all_samples)
      meta["samples"][str(dtype).removeprefix("torch.")] = {
          "torch": len(all_samples), "recorded": len(kept)}
      for arguments in kept:
        records.append(_record(torch, fn, name, "", index, arguments))
        index += 1
      if name in ELEMENTWISE and dtype == torch.float64:
        arguments = _derived(torch, kept)
        if arguments is not None:
          records.append(_record(torch, fn, name, "derived", 0, arguments))
    if op.error_inputs_func is not None:
      _seed(torch)
      for i, error_input in enumerate(op.error_inputs("cpu")):
        arguments = _bind(fn, error_input.sample_input)
        expected = {"type": error_input.error_type.__name__,
                    "regex": error_input.error_regex}
        records.append(_record(torch, fn, name, "error", i, arguments,
                               {"opinfo_error": expected}))
    ops_meta[name] = meta
  return {"torch": torch.__version__, "seed": SEED, "budget": BUDGET,
          "ops": ops_meta, "records": records}


def write(data, path=GOLDEN):
  """``data`` as compact gzipped JSON, the same bytes for the same data."""
  text = json.dumps(data, separators=(",", ":"))
  with open(path, "wb") as raw, gzip.GzipFile(
      fileobj=raw, mode="wb", mtime=0, filename="") as f:
    f.write(text.encode() + b"\n")
  return path


def main():
  try:
    import torch  # noqa: PLC0415
    from torch.testing._internal import (  # noqa: PLC0415
        common_methods_invocations)
  except ImportError as e:
    sys.exit(f"torch_opinfo.py: needs torch and expecttest ({e})")
  data = generate(torch, common_methods_invocations.op_db)
  print(write(data), len(data["records"]), "records")


if __name__ == "__main__":
  main()
