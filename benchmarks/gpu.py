"""The GPU checks of the cross-entropy kernels, in one command.

1. ``tests/test_kernels.py`` on the device: on a GPU the Pallas tests run the
   compiled Triton kernels (elsewhere, interpret mode); the outcome of every
   test goes to ``results/kernel_tests-<device>.json``.
2. ``benchmarks/cross_entropy.py --device gpu``: the [8192, 128256] bfloat16
   problem, jaxloss auto / xla / pallas / reference, optax, optax after a
   float32 upcast, torch when it sees the GPU, and the copy bandwidth, all in
   one run; ``results/cross_entropy-<device>.json``.
3. ``benchmarks/cross_entropy.py --device gpu --labels probabilities``: the
   same problem against bfloat16 probability labels (``softmax_cross_entropy``,
   XLA custom VJP against reference and optax);
   ``results/probability_cross_entropy-<device>.json``.
4. ``benchmarks/linear_cross_entropy.py --device gpu``: the fused linear +
   cross entropy problem (bfloat16, N=8192, D=4096, V=128256) against the
   plain version and its three matmuls; ``results/linear_cross_entropy-*``.
5. ``benchmarks/linear_cross_entropy.py --device gpu --distillation``:
   ``linear_distillation_loss`` (forward KL, JSD) against both materialized
   logits; ``results/linear_distillation-<device>.json``.
6. With ``--suite``, ``benchmarks/suite.py --device gpu`` as well.

Each step runs in its own process under a time limit (``--limits``), so one
that hangs or fails leaves the others' results; with ``--copy-to`` each
step's files are copied as soon as it ends.

Run from the repository root, with jaxloss importable (installed, or the root
on ``PYTHONPATH``):

  python benchmarks/gpu.py                      # on the GPU machine
  python benchmarks/gpu.py --copy-to DIR        # also copy the JSON to DIR
  python benchmarks/gpu.py --smoke              # tiny sizes, any machine
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

# The tests run in this process and the benchmarks in child processes: none
# may hold the GPU's memory in advance.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


class Outcomes:
  """A pytest plugin recording each test's outcome."""

  def __init__(self):
    self.tests = {}

  def pytest_runtest_logreport(self, report):
    if report.when == "call" or report.outcome != "passed":
      entry = {"outcome": report.outcome,
               "seconds": round(report.duration, 3)}
      if report.outcome == "failed":
        entry["message"] = str(report.longrepr)[-2000:]
      if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        entry["message"] = report.longrepr[2]
      self.tests.setdefault(report.nodeid, entry)


def run_tests(smoke):
  """Runs in the child process ``gpu.py --tests-only``."""
  import pytest  # noqa: PLC0415
  sys.path.insert(0, str(HERE))
  import common  # noqa: PLC0415
  outcomes = Outcomes()
  args = ["-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
          str(ROOT / "tests" / "test_kernels.py")]
  if smoke:
    args += ["-k", "pallas", "-m", "not slow"]
  t0 = time.perf_counter()
  code = pytest.main(args, plugins=[outcomes])
  counts = {}
  for entry in outcomes.tests.values():
    counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
  path = common.write_json("kernel_tests" + ("_smoke" if smoke else ""), {
      "command": "python benchmarks/gpu.py" + (" --smoke" if smoke else ""),
      "exit_code": int(code), "seconds": round(time.perf_counter() - t0, 1),
      "counts": counts, "tests": outcomes.tests})
  print(f"tests: {counts}", flush=True)
  print(f"wrote {path}", flush=True)
  return path, int(code)


def run_script(args, limit):
  """Runs ``python *args`` with a time limit; its output streams through."""
  print("$ python " + " ".join(args), flush=True)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  lines = []
  deadline = time.monotonic() + limit
  killer = threading.Timer(limit, proc.kill)
  killer.start()
  try:
    for line in proc.stdout:
      sys.stdout.write(line)
      sys.stdout.flush()
      lines.append(line)
  finally:
    killer.cancel()
  code = proc.wait()
  if time.monotonic() >= deadline:
    print(f"killed after its limit of {limit} s", flush=True)
  written = [line.split("wrote ", 1)[1].strip()
             for line in lines if line.startswith("wrote ")]
  return [pathlib.Path(p) for p in written], code


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes and the Pallas tests only: checks this "
                           "script on any machine")
  parser.add_argument("--suite", action="store_true",
                      help="also run benchmarks/suite.py")
  parser.add_argument("--steps",
                      default="tests,cross_entropy,probabilities,linear,"
                              "distillation",
                      help="comma-separated steps to run, in this order")
  parser.add_argument("--limits", default="tests=150,cross_entropy=150,"
                      "probabilities=90,linear=240,distillation=120,"
                      "suite=240",
                      help="seconds each step may take before it is killed")
  parser.add_argument("--copy-to", type=pathlib.Path,
                      help="directory to copy the result files to")
  parser.add_argument("--tests-only", action="store_true",
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.tests_only:
    sys.exit(run_tests(args.smoke)[1])
  limits = dict(item.split("=") for item in args.limits.split(","))

  import jax  # noqa: PLC0415
  print(f"jax {jax.__version__}, devices {jax.devices()}", flush=True)
  if jax.default_backend() != "gpu" and not args.smoke:
    print("no GPU: the Pallas tests run in interpret mode and the benchmark "
          "runs the GPU problem on this backend", flush=True)

  smoke = ["--smoke"] if args.smoke else []
  commands = {
      "tests": ["benchmarks/gpu.py", "--tests-only", *smoke],
      "cross_entropy": ["benchmarks/cross_entropy.py", "--device", "gpu"],
      "probabilities": ["benchmarks/cross_entropy.py", "--device", "gpu",
                        "--labels", "probabilities", "--rounds", "10"],
      "linear": ["benchmarks/linear_cross_entropy.py", "--device", "gpu"],
      "distillation": ["benchmarks/linear_cross_entropy.py", "--device",
                       "gpu", "--distillation", "--rounds", "5"],
      "suite": ["benchmarks/suite.py", "--device", "gpu"],
  }
  if args.smoke:
    commands["cross_entropy"] = [
        "benchmarks/cross_entropy.py", "--sizes", "64", "1000", "--rounds",
        "2", "--pallas", "--pallas-configs", "256x4",
        "--name", "cross_entropy_smoke"]
    commands["probabilities"] = [
        "benchmarks/cross_entropy.py", "--sizes", "64", "1000", "--rounds",
        "2", "--labels", "probabilities", "--no-write"]
    commands["linear"] = [
        "benchmarks/linear_cross_entropy.py", "--sizes", "64", "32", "500",
        "--rounds", "2", "--variants", "16,32x128", "--no-write"]
    commands["distillation"] = [
        "benchmarks/linear_cross_entropy.py", "--sizes", "64", "32", "500",
        "--rounds", "2", "--distillation", "--no-write"]
    commands["suite"] = [
        "benchmarks/suite.py", "--elements", "65536", "--rounds", "1",
        "--only", "l2_loss,softmax_cross_entropy_with_integer_labels",
        "--name", "suite_smoke"]
  steps = [s for s in args.steps.split(",") if s]
  if args.suite and "suite" not in steps:
    steps.append("suite")

  written, codes = [], {}
  for step in steps:
    t0 = time.perf_counter()
    paths, codes[step] = run_script(commands[step], float(limits[step]))
    print(f"step {step}: exit {codes[step]} in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    written += paths
    if args.copy_to:
      args.copy_to.mkdir(parents=True, exist_ok=True)
      for p in paths:
        shutil.copy(ROOT / p, args.copy_to / p.name)
  print(json.dumps({"written": [str(p) for p in written],
                    "exit_codes": codes}), flush=True)
  sys.exit(max(abs(c) for c in codes.values()) if codes else 0)


if __name__ == "__main__":
  main()
