"""Torch parity without torch: golden cases, and live checks when it exists.

A family of cases lives in ``tests/torch_cases_<family>.py`` as ``CASES``, a
list of :class:`Case`. ``python tests/torch_golden.py`` (torch installed)
evaluates every case in float64 with torch and writes the inputs, values and
gradients to ``tests/golden/<family>.json``; the test suite compares jaxloss
against those files always, and against torch itself when it is importable.
"""

import dataclasses
import importlib
import json
import pathlib
import sys
from collections.abc import Callable

import numpy as np

GOLDEN = pathlib.Path(__file__).parent / "golden"


@dataclasses.dataclass(frozen=True)
class Case:
  """One comparison: the same inputs through torch and through jaxloss.

  ``torch_fn(torch, **tensors)`` and ``jax_fn(**arrays)`` return the loss;
  ``inputs`` maps names to float64 or int64 numpy arrays; ``grad`` names the
  float inputs whose gradients of ``loss.sum()`` are compared too.
  """
  name: str
  torch_fn: Callable
  jax_fn: Callable
  inputs: dict
  grad: tuple = ()


def torch_or_none():
  try:
    import torch  # noqa: PLC0415
  except ImportError:
    return None
  return torch


def run_torch(case, torch):
  """Value and gradients of ``case`` under torch, in float64 numpy."""
  tensors = {}
  for name, value in case.inputs.items():
    t = torch.tensor(value)
    if name in case.grad:
      t.requires_grad_(True)
    tensors[name] = t
  out = case.torch_fn(torch, **tensors)
  grads = {}
  if case.grad:
    gs = torch.autograd.grad(out.sum(), [tensors[n] for n in case.grad],
                             allow_unused=True)
    grads = {n: (np.zeros_like(case.inputs[n]) if g is None
                 else g.detach().numpy()) for n, g in zip(case.grad, gs)}
  return out.detach().numpy(), grads


def run_jax(case, inputs=None):
  """Value and gradients of ``case`` under jaxloss, in float64."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  inputs = case.inputs if inputs is None else inputs
  with jax.enable_x64(True):
    arrays = {n: jnp.asarray(v) for n, v in inputs.items()}
    value = np.asarray(case.jax_fn(**arrays))
    grads = {}
    if case.grad:
      def total(diff):
        return jnp.sum(case.jax_fn(**{**arrays, **diff}))
      g = jax.grad(total)({n: arrays[n] for n in case.grad})
      grads = {n: np.asarray(v) for n, v in g.items()}
  return value, grads


def _encode(a):
  a = np.asarray(a)
  return {"dtype": str(a.dtype), "shape": list(a.shape),
          "data": [None if np.isnan(v) else v for v in a.ravel().tolist()]
          if a.dtype.kind == "f" else a.ravel().tolist()}


def _decode(d):
  data = [np.nan if v is None else v for v in d["data"]]
  return np.asarray(data, dtype=d["dtype"]).reshape(d["shape"])


def cases(family):
  return importlib.import_module(f"torch_cases_{family}").CASES


def write(family, torch):
  records = []
  for case in cases(family):
    value, grads = run_torch(case, torch)
    records.append({
        "name": case.name,
        "inputs": {n: _encode(v) for n, v in case.inputs.items()},
        "value": _encode(value),
        "grads": {n: _encode(v) for n, v in grads.items()},
    })
  path = GOLDEN / f"{family}.json"
  path.write_text(json.dumps({"torch": torch.__version__, "cases": records},
                             indent=None, separators=(",", ":")) + "\n")
  return path


def read(family):
  """``{name: (inputs, value, grads)}`` from the committed golden file."""
  data = json.loads((GOLDEN / f"{family}.json").read_text())
  return {r["name"]: ({n: _decode(v) for n, v in r["inputs"].items()},
                      _decode(r["value"]),
                      {n: _decode(v) for n, v in r["grads"].items()})
          for r in data["cases"]}


def families():
  here = pathlib.Path(__file__).parent
  return sorted(p.stem[len("torch_cases_"):]
                for p in here.glob("torch_cases_*.py"))


def assert_close(actual, expected, rtol, atol, what):
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol,
                             equal_nan=True, err_msg=what)


if __name__ == "__main__":
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  torch = torch_or_none()
  if torch is None:
    sys.exit("torch_golden.py: torch is needed to write golden files "
             "(pip install torch==2.13.0)")
  torch.set_default_dtype(torch.float64)
  for fam in sys.argv[1:] or families():
    print(write(fam, torch))
