"""Page faults per call: jaxloss's loss against the suite's baseline.

XLA:CPU allocates an executable's temporaries on every call, and glibc
serves an allocation at or above its mmap threshold (adjusted as the
process frees such blocks, at most 32 MiB on 64-bit Linux) with fresh pages,
each of which faults when the program first writes it: time spent in the
kernel, whose place in the program (a multithreaded loop, or a library
kernel writing alone) decides how much of it the call waits for. This
counts the minor page faults (``getrusage``'s ``ru_minflt``) per call of
the mean and of the mean with its gradient, jaxloss's and the baseline's
of ``benchmarks/suite.py``, on the inputs the suite builds, in a fresh
process. Temporaries of 32 MiB or more fault on every call in any process;
smaller ones depend on what the process freed before.

  python benchmarks/page_faults.py multiclass_hinge_loss
  python benchmarks/page_faults.py --shapes wide multiclass_perceptron_loss
"""

import argparse
import resource
import warnings

import jax
import jax.numpy as jnp

import common
import suite


def faults_per_call(compiled, args, calls=20):
  """Minor page faults per call of ``compiled(*args)``, after 5 calls."""
  for _ in range(5):
    jax.block_until_ready(compiled(*args))
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(calls):
    jax.block_until_ready(compiled(*args))
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def measure(name, shapes, elements, dtype):
  """Rows of (loss, mode, implementation, faults per call, temporaries)."""
  (_, baseline), = suite.plan({name})[0]
  ours, theirs = suite.implementations(name, baseline)
  builder, _ = suite.BUILDERS[name]
  inputs, kw = builder(elements, shapes, dtype, jax.random.key(0))
  rows = []
  for mode in ("value", "grad"):
    for impl, fn in (("jaxloss", ours), (baseline, theirs)):
      f = suite.scalar_loss(fn, kw)
      if mode == "grad":
        f = jax.value_and_grad(f)
      compiled = jax.jit(f).lower(*inputs).compile()
      temp = compiled.memory_analysis().temp_size_in_bytes
      rows.append((name, mode, impl, faults_per_call(compiled, inputs), temp))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("names", nargs="+")
  parser.add_argument("--shapes", choices=tuple(suite.SHAPES),
                      default="default")
  parser.add_argument("--elements", type=int, default=suite.ELEMENTS["cpu"])
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()
  warnings.filterwarnings("ignore", "The function .* is deprecated",
                          DeprecationWarning)
  shapes, dtype = suite.SHAPES[args.shapes], jnp.dtype(args.dtype)
  print("| loss | mode | implementation | page faults per call | "
        "temporaries |")
  print("| --- | --- | --- | --- | --- |")
  for name in args.names:
    for loss, mode, impl, faults, temp in measure(name, shapes,
                                                  args.elements, dtype):
      print(f"| {loss} | {mode} | {impl} | {faults:.0f} | "
            f"{common.fmt_bytes(temp)} |")


if __name__ == "__main__":
  main()
