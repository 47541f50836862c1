"""Vocabulary-parallel cross entropy: classes split over a mesh axis.

Each loss is computed inside ``jax.shard_map`` on 8 CPU devices and compared,
value and gradients, with the same loss on the whole, unsharded inputs.
"""

import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxloss
from helpers import jit_fast

CE = jaxloss.softmax_cross_entropy_with_integer_labels
LCE = jaxloss.linear_softmax_cross_entropy
CPUS = jax.devices("cpu")
# The CPU device count is fixed when JAX's backend starts: a process with
# fewer than 8 runs this module again in a child process that has 8.
DIRECT = len(CPUS) >= 8
direct = pytest.mark.skipif(
    not DIRECT, reason="fewer than 8 CPU devices: test_in_subprocess runs it")

rng = np.random.default_rng(7)
N, V, D = 16, 64, 8
K = 8                 # shards of the classes on the 1-D mesh
WIDTH = V // K
LOGITS = rng.normal(0, 2, (N, V))
LABELS = rng.integers(0, V, (N,))
LABELS[[2, 11]] = -100
WEIGHT = rng.uniform(0.5, 2, (V,))
ROWS = np.ones(N, bool)
ROWS[[4, 9]] = False
# A class mask: row 5 keeps no class of shard 0, row 6 keeps only shard 7.
CLASSES = rng.uniform(size=(N, V)) > 0.2
CLASSES[5, :WIDTH] = False
CLASSES[6, :] = False
CLASSES[6, -WIDTH:] = True
CLASSES[np.arange(N), np.maximum(LABELS, 0)] = True
# -inf logits: impossible classes, a whole shard of them in row 3.
INF_LOGITS = LOGITS.copy()
INF_LOGITS[3, WIDTH:2 * WIDTH] = -np.inf
INF_LOGITS[7, [1, 30, 50]] = -np.inf
INF_LOGITS[np.arange(N), np.maximum(LABELS, 0)] = LOGITS[
    np.arange(N), np.maximum(LABELS, 0)]
HIDDEN = rng.normal(0, 1, (N, D))
KERNEL = rng.normal(0, 0.7, (D, V))
BIAS = rng.normal(0, 1, (V,))
INF_BIAS = BIAS.copy()
INF_BIAS[WIDTH:2 * WIDTH] = -np.inf     # a whole shard of impossible classes
INF_BIAS[[40, 41]] = -np.inf
COTANGENT = rng.normal(0, 1, (N,))
PLACEMENTS = {
    "one_shard": rng.integers(3 * WIDTH, 4 * WIDTH, (N,)),
    "boundaries": np.resize([0, WIDTH - 1, WIDTH, V - 1], N),
}
for placed in PLACEMENTS.values():
  INF_BIAS[placed] = np.where(np.isinf(INF_BIAS[placed]), 0.0,
                              INF_BIAS[placed])
INF_BIAS[np.maximum(LABELS, 0)] = BIAS[np.maximum(LABELS, 0)]


def mesh(shape, names, axis_type=AxisType.Auto):
  devices = np.array(CPUS[:math.prod(shape)]).reshape(shape)
  return Mesh(devices, names, axis_types=(axis_type,) * len(shape))


def shard_call(fn, mesh_, args, specs, out_specs, check_vma=True):
  """``fn(**args)`` under ``shard_map``, None arguments left out."""
  names = [k for k, v in args.items() if v is not None]
  f = jax.shard_map(lambda *a: fn(**{**args, **dict(zip(names, a))}),
                    mesh=mesh_,
                    in_specs=tuple(specs[k] for k in names),
                    out_specs=out_specs, check_vma=check_vma)
  return f(*(args[k] for k in names))


def value_and_grads(f, args, argnums):
  """The loss and the gradient of its COTANGENT-weighted sum, compiled."""
  def scalar(*a):
    out = f(*a)
    if not out.ndim:
      return out, out
    return jnp.sum(out * jnp.asarray(COTANGENT, out.dtype).reshape(
        out.shape)), out
  (_, out), grads = jit_fast(jax.value_and_grad(
      scalar, argnums, has_aux=True))(*args)
  return np.asarray(out, np.float64), [np.asarray(g, np.float64)
                                       for g in grads]


def assert_same(a, b, rtol=1e-10, atol=1e-12):
  (va, ga), (vb, gb) = a, b
  np.testing.assert_allclose(va, vb, rtol=rtol, atol=atol)
  for x, y in zip(ga, gb, strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# Softmax cross entropy of sharded logits.

def ce_inputs(case, dtype):
  kw = dict(case)
  logits = INF_LOGITS if kw.pop("inf", False) else LOGITS
  labels = kw.pop("labels", LABELS)
  weight = jnp.asarray(WEIGHT, dtype) if kw.pop("weight", False) else None
  where = {None: None, "rows": jnp.asarray(ROWS),
           "classes": jnp.asarray(CLASSES)}[kw.pop("where", None)]
  return jnp.asarray(logits, dtype), jnp.asarray(labels), weight, where, kw


def compare_ce(case, mesh_=None, dtype=jnp.float64, check_vma=True,
               class_axis=-1):
  """(unsharded, sharded) value and logits gradient of one case."""
  mesh_ = mesh_ or mesh((K,), ("model",))
  logits, labels, weight, where, kw = ce_inputs(case, dtype)
  batch = "data" if "data" in mesh_.axis_names else None
  x_spec = P(batch, "model")
  if class_axis == 0:
    logits, x_spec = logits.T, P("model", batch)
    if where is not None and where.ndim == 2:
      where = where.T
  w_spec = x_spec if where is not None and where.ndim == 2 else P(batch)
  out_spec = P(batch) if kw.get("reduction", "none") == "none" else P()

  def unsharded(x):
    return CE(x, labels, class_axis, where, weight=weight, **kw)

  def sharded(x):
    return shard_call(
        lambda x, y, w, m: CE(x, y, class_axis, m, weight=w,
                              axis_name="model", **kw),
        mesh_, dict(x=x, y=labels, w=weight, m=where),
        dict(x=x_spec, y=P(batch), w=P("model"), m=w_spec), out_spec,
        check_vma)

  return (value_and_grads(unsharded, (logits,), (0,)),
          value_and_grads(sharded, (logits,), (0,)))


CE_CASES = {
    "plain": dict(),
    "ignore_mean": dict(ignore_index=-100, reduction="mean"),
    "weight_mean": dict(weight=True, labels=np.maximum(LABELS, 0),
                        reduction="mean"),
    "weight_smoothing": dict(weight=True, ignore_index=-100,
                             label_smoothing=0.1, reduction="mean"),
    "row_where": dict(where="rows", ignore_index=-100, reduction="mean"),
    "class_where": dict(where="classes", ignore_index=-100,
                        label_smoothing=0.3, weight=True),
    "inf_logits": dict(inf=True, ignore_index=-100, label_smoothing=0.2,
                       weight=True, z_loss=1e-3),
    "everything": dict(weight=True, ignore_index=-100, where="rows",
                       label_smoothing=0.2, z_loss=1e-2, reduction="sum"),
}


@direct
@pytest.mark.parametrize("case", CE_CASES)
def test_ce_matches_unsharded(case):
  with jax.enable_x64(True):
    assert_same(*compare_ce(CE_CASES[case]))


@direct
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_ce_label_placement(placement):
  case = dict(labels=PLACEMENTS[placement], weight=True, label_smoothing=0.1,
              reduction="mean")
  with jax.enable_x64(True):
    assert_same(*compare_ce(case))


@direct
def test_ce_class_axis_first():
  case = dict(where="classes", ignore_index=-100, label_smoothing=0.1)
  with jax.enable_x64(True):
    assert_same(*compare_ce(case, class_axis=0))


@direct
def test_ce_out_of_range_labels_are_nan():
  labels = LABELS.copy()
  labels[[0, 5]] = [V, -1]
  case = dict(labels=labels, ignore_index=-100, label_smoothing=0.1)
  with jax.enable_x64(True):
    unsharded, sharded = compare_ce(case)
  assert_same(unsharded, sharded)
  assert np.isnan(sharded[0][[0, 5]]).all()
  assert not np.isnan(np.delete(sharded[0], [0, 5])).any()


@direct
def test_ce_without_replication_checks():
  """Gradients are right with check_vma=False too (no doubled psums)."""
  with jax.enable_x64(True):
    assert_same(*compare_ce(CE_CASES["everything"], check_vma=False))


@direct
def test_ce_2d_mesh():
  """Rows over "data", classes over "model": per-row losses sharded."""
  case = dict(CE_CASES["everything"], reduction="none")
  with jax.enable_x64(True):
    assert_same(*compare_ce(case, mesh((2, 4), ("data", "model"))))


@direct
def test_ce_2d_mesh_global_mean():
  """A mean over rows sharded over "data": "sum", then psum over "data"."""
  m = mesh((2, 4), ("data", "model"))
  logits, labels = jnp.asarray(LOGITS, jnp.float32), jnp.asarray(LABELS)

  def mean(x, y):
    total = CE(x, y, ignore_index=-100, axis_name="model", reduction="sum")
    count = jnp.sum(y != -100, dtype=total.dtype)
    return jax.lax.psum(total, "data") / jax.lax.psum(count, "data")

  f = jax.shard_map(mean, mesh=m, in_specs=(P("data", "model"), P("data")),
                    out_specs=P())
  got = jit_fast(jax.value_and_grad(lambda x: f(x, labels)))(logits)
  want = jit_fast(jax.value_and_grad(
      lambda x: CE(x, labels, ignore_index=-100, reduction="mean")))(logits)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-7)


@direct
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_ce_half_and_single_precision(dtype):
  case = dict(weight=True, ignore_index=-100, label_smoothing=0.1,
              z_loss=1e-3)
  unsharded, sharded = compare_ce(case, dtype=dtype)
  # float32 statistics either way: values agree to float32 rounding; the
  # gradients are written in the logits' dtype (one rounding each).
  np.testing.assert_allclose(sharded[0], unsharded[0], rtol=1e-5)
  tol = 8e-3 if dtype == "bfloat16" else 1e-5
  np.testing.assert_allclose(sharded[1][0], unsharded[1][0], rtol=tol,
                             atol=tol * 1e-2)


@direct
def test_ce_every_device_holds_the_losses():
  m = mesh((K,), ("model",))
  logits, labels = jnp.asarray(LOGITS, jnp.float32), jnp.asarray(LABELS)
  f = jax.shard_map(
      lambda x, y: CE(x, y, ignore_index=-100, axis_name="model")[None],
      mesh=m, in_specs=(P(None, "model"), P()), out_specs=P("model"),
      check_vma=False)
  per_device = np.asarray(f(logits, labels))
  want = np.asarray(CE(logits, labels, ignore_index=-100))
  for row in per_device:
    np.testing.assert_allclose(row, want, rtol=1e-6)


@direct
def test_ce_explicit_mesh():
  """JAX's default (explicit) mesh axes, inputs placed with device_put."""
  m = mesh((K,), ("model",), AxisType.Explicit)
  x = jax.device_put(jnp.asarray(LOGITS, jnp.float32),
                     NamedSharding(m, P(None, "model")))
  y = jax.device_put(jnp.asarray(LABELS), NamedSharding(m, P()))
  f = jax.shard_map(
      lambda x, y: CE(x, y, ignore_index=-100, axis_name="model",
                      reduction="mean"),
      mesh=m, in_specs=(P(None, "model"), P()), out_specs=P())
  with jax.set_mesh(m):
    got = jax.jit(jax.value_and_grad(f))(x, y)
  want = jax.value_and_grad(lambda x: CE(x, LABELS, ignore_index=-100,
                                         reduction="mean"))(
      jnp.asarray(LOGITS, jnp.float32))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-7)


def collectives(hlo):
  """``(op, element count)`` of every array a collective produces."""
  out = []
  for line in hlo.splitlines():
    match = re.search(r"=\s*(.*?)\s+(all-reduce|all-gather|all-to-all|"
                      r"collective-permute|reduce-scatter)(-start)?\(", line)
    if match:
      for dims in re.findall(r"\[([\d,]*)\]", match.group(1)):
        out.append((match.group(2), math.prod(
            int(d) for d in dims.split(",") if d)))
  return out


@direct
def test_ce_communication_is_per_row():
  m = mesh((K,), ("model",))
  case = CE_CASES["everything"]
  logits, labels, weight, where, kw = ce_inputs(case, jnp.float32)

  def loss(x):
    return jax.shard_map(
        lambda x, y, w, r: CE(x, y, where=r, weight=w, axis_name="model",
                              **kw),
        mesh=m, in_specs=(P(None, "model"), P(), P("model"), P()),
        out_specs=P())(x, labels, weight, where)

  hlo = jax.jit(jax.value_and_grad(loss)).lower(logits).compile().as_text()
  found = collectives(hlo)
  assert found, "expected all-reduces of the row statistics"
  assert {op for op, _ in found} == {"all-reduce"}
  assert max(size for _, size in found) <= N


@direct
def test_ce_errors():
  logits, labels = jnp.asarray(LOGITS, jnp.float32), jnp.asarray(LABELS)
  fn = "softmax_cross_entropy_with_integer_labels: "
  with pytest.raises(ValueError, match=fn + "axis_name 'model' is not bound: "
                     "call inside jax.shard_map over that mesh axis"):
    CE(logits, labels, axis_name="model")
  with pytest.raises(TypeError, match=fn + "axis_name must be a mesh axis "
                     r"name \(a str\) or a tuple of them, got 3"):
    CE(logits, labels, axis_name=3)
  m = mesh((K,), ("model",))
  with pytest.raises(ValueError, match=fn + r"weight must have shape \(8,\) "
                     r"\(the local shard: one per class of the logits' "
                     r"shard\), got \(64,\)"):
    jax.shard_map(lambda x: CE(x, labels, weight=jnp.ones(V),
                               axis_name="model"),
                  mesh=m, in_specs=P(None, "model"), out_specs=P())(logits)


@direct
def test_ce_checked_rejects_out_of_range_labels():
  m = mesh((K,), ("model",))
  labels = LABELS.copy()
  labels[5] = V

  def loss(x, y):
    return jax.shard_map(
        lambda x, y: CE(x, y, ignore_index=-100, axis_name="model"),
        mesh=m, in_specs=(P(None, "model"), P()), out_specs=P())(x, y)

  checked = jaxloss.checked(jax.jit(loss))
  logits = jnp.asarray(LOGITS, jnp.float32)
  checked(logits, jnp.asarray(LABELS))
  with pytest.raises(jaxloss.CheckError, match=(
      r"labels must be in \[0, 64\) or equal ignore_index; first offending "
      r"element labels\[5\] = 64")):
    checked(logits, jnp.asarray(labels))


# The fused linear layer and cross entropy with a sharded kernel.

def lce_inputs(case, dtype):
  kw = dict(case)
  bias = {None: None, True: BIAS, "inf": INF_BIAS}[kw.pop("bias", None)]
  labels = kw.pop("labels", LABELS)
  weight = jnp.asarray(WEIGHT, dtype) if kw.pop("weight", False) else None
  where = jnp.asarray(ROWS) if kw.pop("where", False) else None
  arrays = [jnp.asarray(a, dtype) for a in (HIDDEN, KERNEL)]
  arrays.append(None if bias is None else jnp.asarray(bias, dtype))
  return arrays, jnp.asarray(labels), weight, where, kw


def compare_lce(case, mesh_=None, dtype=jnp.float64, check_vma=True):
  """(unsharded, sharded) value and gradients for hidden, kernel, bias."""
  mesh_ = mesh_ or mesh((K,), ("model",))
  arrays, labels, weight, where, kw = lce_inputs(case, dtype)
  batch = "data" if "data" in mesh_.axis_names else None
  out_spec = P(batch) if kw.get("reduction", "none") == "none" else P()
  argnums = (0, 1) if arrays[2] is None else (0, 1, 2)

  def unsharded(h, k, b=None):
    return LCE(h, k, labels, bias=b, weight=weight, where=where, **kw)

  def sharded(h, k, b=None):
    return shard_call(
        lambda h, k, b, y, w, r: LCE(h, k, y, bias=b, weight=w, where=r,
                                     axis_name="model", **kw),
        mesh_, dict(h=h, k=k, b=b, y=labels, w=weight, r=where),
        dict(h=P(batch, None), k=P(None, "model"), b=P("model"),
             y=P(batch), w=P("model"), r=P(batch)), out_spec, check_vma)

  args = tuple(a for a in arrays if a is not None)
  return (value_and_grads(unsharded, args, argnums),
          value_and_grads(sharded, args, argnums))


LCE_CASES = {
    "plain": dict(),
    "bias_weight_mean": dict(bias=True, weight=True, ignore_index=-100,
                             reduction="mean"),
    "inf_bias": dict(bias="inf", where=True, ignore_index=-100,
                     label_smoothing=0.2, z_loss=1e-2),
    "softcap_sum": dict(bias=True, weight=True, ignore_index=-100,
                        label_smoothing=0.1, logit_softcap=2.0,
                        reduction="sum", chunk_size=8),
    "chunks": dict(bias="inf", weight=True, ignore_index=-100, where=True,
                   label_smoothing=0.3, z_loss=1e-2, reduction="mean",
                   chunk_size=(6, 4)),
}


@direct
@pytest.mark.parametrize("case", LCE_CASES)
def test_lce_matches_unsharded(case):
  with jax.enable_x64(True):
    assert_same(*compare_lce(LCE_CASES[case]))


@direct
def test_lce_labels_at_shard_boundaries():
  case = dict(labels=PLACEMENTS["boundaries"], bias="inf", weight=True,
              label_smoothing=0.1, reduction="mean")
  with jax.enable_x64(True):
    assert_same(*compare_lce(case))


@direct
def test_lce_without_replication_checks():
  with jax.enable_x64(True):
    assert_same(*compare_lce(LCE_CASES["softcap_sum"], check_vma=False))


@pytest.mark.slow  # Over 15 s on 2 shared cores.
@direct
def test_lce_2d_mesh():
  """Tokens over "data" (hidden sharded), the kernel's columns over "model"."""
  case = dict(LCE_CASES["inf_bias"], reduction="none")
  with jax.enable_x64(True):
    assert_same(*compare_lce(case, mesh((2, 4), ("data", "model"))))


@direct
def test_lce_bfloat16():
  case = dict(bias=True, weight=True, ignore_index=-100, label_smoothing=0.1)
  unsharded, sharded = compare_lce(case, dtype=jnp.bfloat16)
  np.testing.assert_allclose(sharded[0], unsharded[0], rtol=1e-5)
  for got, want in zip(sharded[1], unsharded[1], strict=True):
    # float32 accumulation in both; the hidden gradient is summed over the
    # shards in float32, then rounded once to bfloat16.
    np.testing.assert_allclose(got, want, rtol=8e-3,
                               atol=8e-3 * np.abs(want).max())


@direct
def test_lce_communication_is_per_token():
  m = mesh((K,), ("model",))
  arrays, labels, weight, where, kw = lce_inputs(
      dict(bias=True, weight=True, ignore_index=-100, where=True,
           label_smoothing=0.1, z_loss=1e-2, reduction="mean"), jnp.float32)

  def loss(h, k, b):
    return jax.shard_map(
        lambda h, k, b, y, w, r: LCE(h, k, y, bias=b, weight=w, where=r,
                                     axis_name="model", **kw),
        mesh=m, in_specs=(P(), P(None, "model"), P("model"), P(), P("model"),
                          P()),
        out_specs=P())(h, k, b, labels, weight, where)

  hlo = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).lower(
      *arrays).compile().as_text()
  found = collectives(hlo)
  assert {op for op, _ in found} == {"all-reduce"}
  sizes = {size for _, size in found}
  # Per-token statistics, and the [N, D] hidden gradient: never [N, V/k].
  assert sizes <= set(range(N + 1)) | {N * D}, sizes
  assert N * D in sizes


@direct
def test_lce_errors():
  h, k = jnp.asarray(HIDDEN, jnp.float32), jnp.asarray(KERNEL, jnp.float32)
  labels = jnp.asarray(np.maximum(LABELS, 0))
  fn = "linear_softmax_cross_entropy: "
  with pytest.raises(ValueError, match=fn + "axis_name 'model' is not bound: "
                     "call inside jax.shard_map over that mesh axis"):
    LCE(h, k, labels, axis_name="model")
  with pytest.raises(TypeError, match=fn + "axis_name must be a mesh axis "
                     r"name \(a str\) or a tuple of them, got \('model', 3\)"):
    LCE(h, k, labels, axis_name=("model", 3))
  m = mesh((K,), ("model",))
  with pytest.raises(ValueError, match=fn + r"bias must have shape \(8,\) "
                     r"\(the local shard: one per class of the kernel's "
                     r"shard\), got \(64,\)"):
    jax.shard_map(lambda k: LCE(h, k, labels, bias=jnp.zeros(V),
                                axis_name="model"),
                  mesh=m, in_specs=P(None, "model"), out_specs=P())(k)


@direct
def test_lce_checked():
  m = mesh((K,), ("model",))
  h, k = jnp.asarray(HIDDEN, jnp.float32), jnp.asarray(KERNEL, jnp.float32)

  def loss(h, k, y):
    return jax.shard_map(
        lambda h, k, y: LCE(h, k, y, ignore_index=-100, axis_name="model"),
        mesh=m, in_specs=(P(), P(None, "model"), P()), out_specs=P())(h, k, y)

  checked = jaxloss.checked(jax.jit(loss))
  labels = LABELS.copy()
  labels[5] = V
  with pytest.raises(jaxloss.CheckError, match=(
      r"labels must be in \[0, 64\) or equal ignore_index; first offending "
      r"element labels\[5\] = 64")):
    checked(h, k, jnp.asarray(labels))
  bad = h.at[3, 1].set(jnp.nan)
  with pytest.raises(jaxloss.CheckError, match=(
      r"linear_softmax_cross_entropy: hidden must be finite \(no NaN or "
      r"inf\) in kept rows; first offending element hidden\[3, 1\] = nan")):
    checked(bad, k, jnp.asarray(LABELS))
  # A dropped row may hold anything.
  checked(bad, k, jnp.asarray(LABELS).at[3].set(-100))


@pytest.mark.skipif(DIRECT, reason="8 CPU devices here: the tests run above")
def test_in_subprocess():
  """This module again, in a process whose CPU backend has 8 devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                      + " --xla_force_host_platform_device_count=8")
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", __file__],
      env=env, capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
  passed = re.search(r"(\d+) passed", result.stdout)
  assert passed and int(passed.group(1)) > 30, result.stdout[-2000:]
