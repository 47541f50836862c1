"""jaxloss.nn on PyTorch's own OpInfo samples for every torch loss.

``tests/golden/opinfo.json.gz``, written by ``torch_opinfo.py`` (which says
how the samples are chosen), holds the sample and error inputs of torch's
OpInfos for its loss functions with torch's answer. Each goes through the
``jaxloss.nn`` class of the same name in float64, built from the
functional call's options (``reduction``, ``weight``, ``margin``, ...) and
called on its tensors, in torch's order:

* torch computed a value: jaxloss computes the same (shape, dtype and
  numbers), both plainly and under ``jax.grad``, and the same gradients of
  ``value.sum()``;
* torch raised: jaxloss raises ValueError or TypeError while tracing, with a
  message that starts with the class's or a jaxloss function's name;
* torch broadcast a target to a shape other than the predictions' (with its
  UserWarning for mse/l1/smooth_l1/huber, silently otherwise): jaxloss
  raises ValueError. That is its shape contract, a deliberate difference:
  a loss's element shape is its predictions' shape; targets, weights and
  masks may broadcast to it, never enlarge it.

Everything runs under ``jax.jit`` with the arrays traced: the path users
take, with the checks at trace time.
"""

import functools
import inspect
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
import torch_opinfo

GOLDEN = torch_opinfo.read()
OPS = GOLDEN["ops"]
RECORDS = GOLDEN["records"]

RTOL, ATOL = 1e-10, 1e-12
# torch's deprecated arguments, which jaxloss.nn does not take.
DEPRECATED = ("size_average", "reduce")


def _enlarges(record):
  return record.get("enlarges", False) or any(
      torch_opinfo.BROADCAST_WARNING in w["message"]
      for w in record.get("warnings", ()))


def _records(keep):
  chosen = [r for r in RECORDS if keep(r)]
  return pytest.mark.parametrize("record", chosen,
                                 ids=[r["id"] for r in chosen])


@functools.cache
def _pairwise_distance(p, eps, keepdim):
  # One object per configuration: the class hashes its distance_function.
  return functools.partial(jaxloss.pairwise_distance, p=p, eps=eps,
                           keepdim=keepdim)


def _value(v):
  if isinstance(v, dict) and v.get("callable") == "pairwise_distance":
    return _pairwise_distance(v["p"], v["eps"], v["keepdim"])
  return torch_opinfo.decode_value(v)


class _Loss:
  """A record's jaxloss.nn class, and which arguments go where."""

  def __init__(self, record):
    if "skip" in record:
      pytest.skip(record["skip"])
    op = OPS[record["op"]]
    self.name = op["class"]
    self.cls = getattr(jaxloss.nn, self.name, None)
    if self.cls is None:
      pytest.skip(f"jaxloss.nn has no {self.name} yet")
    options = inspect.signature(self.cls).parameters
    call = list(inspect.signature(self.cls.__call__).parameters.values())[1:]
    self.keywords = {p.name for p in call if p.kind == p.KEYWORD_ONLY}
    call = [p.name for p in call]
    self.args = {n: _value(v) for n, v in record["args"].items()}
    self.options, self.call = [], []
    for n in self.args:
      if n in call:
        self.call.append(n)
      elif n in options:
        self.options.append(n)
      elif n in DEPRECATED:
        pytest.skip(f"torch's deprecated {n}= (jaxloss.nn takes "
                    "reduction= only)")
      elif n in op["module_params"]:
        pytest.fail(f"jaxloss.nn.{self.name} takes no {n!r}, which "
                    f"torch.nn.{self.name} takes")
      else:
        pytest.skip(f"{n}= belongs to torch.nn.functional.{record['op']} "
                    f"only, not to torch.nn.{self.name}")
    assert [n for n in call if n in self.args] == self.call, (
        f"jaxloss.nn.{self.name} is called as {call}, torch as {self.call}")
    self.traced = [n for n, v in self.args.items()
                   if isinstance(v, np.ndarray)]

  def __call__(self, arrays):
    """The loss on the record's arguments, ``arrays`` replacing its own."""
    values = {**self.args, **arrays}
    loss = self.cls(**{n: values[n] for n in self.options})
    return loss(*[values[n] for n in self.call if n not in self.keywords],
                **{n: values[n] for n in self.call if n in self.keywords})

  def arrays(self):
    """The record's arrays, which the tests pass through ``jax.jit``."""
    return {n: jnp.asarray(self.args[n]) for n in self.traced}


def _value_and_grads(loss, arrays, names):
  """The plain value, and the value and gradients under ``jax.grad``."""
  def total(diff):
    out = loss({**arrays, **diff})
    return jnp.sum(out), out
  (_, out), grads = jax.value_and_grad(total, has_aux=True)(
      {n: arrays[n] for n in names})
  return loss(arrays), out, grads


def _close(actual, expected, what):
  np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL,
                             equal_nan=True, err_msg=what)


def _check_grad(got, expected, what):
  if np.iscomplexobj(got):
    # torch's gradient of a real function of z is the conjugate of JAX's.
    got = np.conj(got)
  assert got.shape == tuple(expected["shape"]), what
  if "projections" in expected:
    directions = torch_opinfo.projections(got.shape)
    diff = directions @ got.ravel() - torch_opinfo.decode_array(
        expected["projections"])
    scale = np.abs(directions) @ np.abs(got.ravel())
    assert np.all(np.abs(diff) <= RTOL * scale + ATOL), (what, diff)
  else:
    _close(got, torch_opinfo.decode_array(expected), what)


def _computes(record):
  return "value" in record and not _enlarges(record)


@functools.cache
def _evaluated(op):
  """``{id: (value, value under grad, grads) or the error}`` for ``op``.

  Every sample of the loss is traced into one program: one compilation per
  loss instead of one per sample (measured: 27 CPU seconds for the whole
  file against 50 compiling each sample, 80 running each op by op). An
  error while building or tracing one sample is kept for its test, and the
  others go on.
  """
  results, losses = {}, {}
  for record in RECORDS:
    if record["op"] == op and _computes(record):
      try:
        losses[record["id"]] = (_Loss(record), tuple(record["grads"]))
      except BaseException as e:  # noqa: BLE001  (pytest's skip and fail too)
        results[record["id"]] = e

  def run(arrays):
    out = {}
    for key, (loss, names) in losses.items():
      try:
        out[key] = _value_and_grads(loss, arrays[key], names)
      except Exception as e:  # noqa: BLE001  (the sample's test reports it)
        results[key] = e
    return out

  with jax.enable_x64(True):
    out = jax.jit(run)({key: loss.arrays()
                        for key, (loss, _) in losses.items()})
  results.update(jax.tree.map(np.asarray, out))
  return results


@pytest.mark.slow
@_records(_computes)
def test_value(record):
  """torch accepts the sample: the same value and gradients."""
  result = _evaluated(record["op"])[record["id"]]
  if isinstance(result, BaseException):
    raise result
  plain, out, grads = result
  expected = torch_opinfo.decode_array(record["value"])
  desc = f"{record['id']} ({record['desc']})"
  for got, how in ((plain, "value"), (out, "value under jax.grad")):
    assert (got.shape, got.dtype) == (expected.shape, expected.dtype), (
        f"{desc}: {how} has shape {got.shape} and dtype {got.dtype}")
    _close(got, expected, f"{desc}: {how}")
  for n, g in record["grads"].items():
    _check_grad(grads[n], g, f"{desc}: d/d{n}")


def _assert_rejected(record, kinds):
  loss = _Loss(record)
  with jax.enable_x64(True), pytest.raises(kinds) as info:
    jax.jit(lambda arrays: loss(arrays))(loss.arrays())
  message = str(info.value)
  assert message.split(":")[0].strip() in {loss.name, *jaxloss.__all__}, (
      f"{record['id']}: the message does not start with {loss.name} or a "
      f"jaxloss function: {message!r}")


@_records(lambda r: "error" in r)
def test_error(record):
  """torch rejects the sample: jaxloss.nn rejects it while tracing."""
  _assert_rejected(record, (ValueError, TypeError))


@_records(lambda r: "value" in r and _enlarges(r))
def test_enlarging_target(record):
  """torch broadcasts a target past the predictions' shape: ValueError."""
  _assert_rejected(record, ValueError)


def test_every_torch_loss_is_recorded():
  import test_completeness  # noqa: PLC0415
  classes = {op["class"] for op in OPS.values() if "class" in op}
  assert set(test_completeness.TORCH_LOSSES) <= classes
  for name, op in OPS.items():
    if "class" in op:
      assert any(r["op"] == name and "value" in r for r in RECORDS), name


def _same(a, b, scale=0.0):
  """Equal, numbers to a few ulps of their array's largest (projections go
  through a BLAS, whose rounding differs between CPUs: a gradient's small
  entry, a difference of larger products, moves by more than its own
  ulps)."""
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
  if isinstance(a, list) and isinstance(b, list):
    numbers = [abs(y) for y in b if isinstance(y, float) and math.isfinite(y)]
    scale = max(numbers, default=0.0)
    return len(a) == len(b) and all(_same(x, y, scale)
                                    for x, y in zip(a, b))
  if isinstance(a, float) or isinstance(b, float):
    return (isinstance(a, (int, float)) and isinstance(b, (int, float))
            and math.isclose(a, b, rel_tol=1e-13,
                             abs_tol=max(1e-13 * scale, 1e-300)))
  return a == b


@pytest.mark.torch
def test_golden_is_torchs():
  """torch, rerun on each record's arguments, answers as recorded."""
  torch = pytest.importorskip("torch")
  if torch.__version__ != GOLDEN["torch"]:
    pytest.skip(f"golden file from torch {GOLDEN['torch']}, torch "
                f"{torch.__version__} installed")
  stale = []
  for record in RECORDS:
    if "skip" in record:
      continue
    answer = json.loads(json.dumps(torch_opinfo.rerun(torch, record)))
    if not _same(answer, {k: record[k] for k in torch_opinfo.ANSWER
                          if k in record}):
      stale.append(record["id"])
  assert not stale, (
      f"torch answers {stale} differently: cd tests && PYTHONPATH=.. "
      "python torch_opinfo.py")
