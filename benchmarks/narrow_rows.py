"""Elementwise losses on narrow rows: [4M, 1] to [32K, 128], against baselines.

XLA:CPU fuses an elementwise loss and its mean into one loop nest over the
operands' shape; on rows of a few elements every operation pays the inner
loop's overhead per row. jaxloss lays such operands out flat on CPUs (see
``jaxloss._reduction.elementwise``); optax and the plain formulas of
``benchmarks/suite.py`` run at the shape they are given. For each loss and
row length this times the mean of ``reduction="none"`` (the optax idiom)
and that mean with its gradient, jaxloss's against the baseline's
(optax's, or the suite's plain formula for torch's and Keras's names),
interleaved in one process, with the suite's inputs and its timing
(``suite.run_one``), and the compile time of each program from cold caches
(the median of ``--compile-repeats`` compilations, interleaved, as the
suite's). Results go to ``results/narrow_rows-<device>.json``.

  python benchmarks/narrow_rows.py
  python benchmarks/narrow_rows.py --widths 1,16 --only huber_loss
"""

import sys
import time

import jax
import jax.numpy as jnp

import common
import suite

# Elementwise losses with a builder of [rows, features] operands in the
# suite: optax's names first, then torch's and Keras's (plain baselines).
LOSSES = ("huber_loss", "l2_loss", "log_cosh", "sigmoid_binary_cross_entropy",
          "hinge_loss", "mse_loss", "l1_loss", "smooth_l1_loss",
          "poisson_nll_loss", "gaussian_nll_loss", "hinge_embedding_loss",
          "soft_margin_loss", "mean_absolute_percentage_error", "poisson")
WIDTHS = (1, 4, 8, 16, 32, 128)


def main():
  args, names, widths = common.width_sweep(__doc__, LOSSES, WIDTHS, 5,
                                           compile_repeats=5)
  todo = dict(suite.plan(set(names))[0])
  started = time.perf_counter()
  print(f"device: {common.device_name()}; {args.elements} elements",
        flush=True)
  table = []
  for i, name in enumerate(names):
    builder, _ = suite.BUILDERS[name]
    for width in widths:
      shapes = suite.SHAPES["default"]._replace(features=width)
      inputs, kw = builder(args.elements, shapes, jnp.float32,
                           jax.random.key(i))
      rows = suite.run_one(name, inputs, kw, todo[name], args.rounds,
                           args.seconds, args.compile_repeats)
      for row in rows:
        row["width"] = width
        row["shapes"] = " ".join("x".join(map(str, a.shape)) for a in inputs)
        table.append({k: row[k] for k in (
            "loss", "width", "mode", "baseline", "jaxloss_ms", "baseline_ms",
            "vs_baseline", "jaxloss_compile_ms", "baseline_compile_ms",
            "vs_baseline_compile", "max_rel_diff", "shapes")})
    print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
  print()
  print(common.table(table, ["loss", "width", "mode", "baseline",
                             "jaxloss_ms", "baseline_ms", "vs_baseline",
                             "vs_baseline_compile"]))
  if not args.no_write:
    path = common.write_json("narrow_rows", {
        "elements": args.elements, "widths": widths,
        "compile_repeats": args.compile_repeats,
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python benchmarks/narrow_rows.py " + " ".join(
            sys.argv[1:]),
        "results": table})
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
