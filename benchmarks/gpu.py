"""The GPU checks of the cross-entropy kernels, in one command.

1. ``tests/test_kernels.py`` on the device: on a GPU the Pallas tests run the
   compiled Triton kernels (elsewhere, interpret mode); the outcome of every
   test goes to ``results/kernel_tests-<device>.json``.
2. ``benchmarks/cross_entropy.py --device gpu``: the [8192, 128256] bfloat16
   problem, jaxloss auto / xla / pallas / reference, optax, optax after a
   float32 upcast, torch when it sees the GPU, and the copy bandwidth, all in
   one run; ``results/cross_entropy-<device>.json``.
3. With ``--suite``, ``benchmarks/suite.py --device gpu`` as well.

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
  print(f"tests: {counts}; wrote {path}", flush=True)
  return path, int(code)


def run_script(args):
  print("$ python " + " ".join(args), flush=True)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=False)
  sys.stdout.write(out.stdout)
  sys.stderr.write(out.stderr[-4000:])
  written = [line.split("wrote ", 1)[1].strip()
             for line in out.stdout.splitlines() if line.startswith("wrote ")]
  return [pathlib.Path(p) for p in written], out.returncode


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes and the Pallas tests only: checks this "
                           "script on any machine")
  parser.add_argument("--suite", action="store_true",
                      help="also run benchmarks/suite.py")
  parser.add_argument("--copy-to", type=pathlib.Path,
                      help="directory to copy the result files to")
  args = parser.parse_args()
  import jax  # noqa: PLC0415
  print(f"jax {jax.__version__}, devices {jax.devices()}", flush=True)
  if jax.default_backend() != "gpu" and not args.smoke:
    print("no GPU: the Pallas tests run in interpret mode and the benchmark "
          "runs the GPU problem on this backend", flush=True)

  written, codes = [], []
  path, code = run_tests(args.smoke)
  written.append(path)
  codes.append(code)
  bench = ["benchmarks/cross_entropy.py", "--device", "gpu"]
  if args.smoke:
    bench = ["benchmarks/cross_entropy.py", "--sizes", "64", "1000",
             "--rounds", "2", "--pallas", "--pallas-configs", "256x4",
             "--name", "cross_entropy_smoke"]
  paths, code = run_script(bench)
  written += paths
  codes.append(code)
  if args.suite:
    suite = ["benchmarks/suite.py", "--device", "gpu"]
    if args.smoke:
      suite = ["benchmarks/suite.py", "--elements", "65536", "--rounds", "1",
               "--only", "l2_loss,softmax_cross_entropy_with_integer_labels",
               "--name", "suite_smoke"]
    paths, code = run_script(suite)
    written += paths
    codes.append(code)

  if args.copy_to:
    args.copy_to.mkdir(parents=True, exist_ok=True)
    for p in written:
      shutil.copy(p, args.copy_to / p.name)
  print(json.dumps({"written": [str(p) for p in written],
                    "exit_codes": codes}), flush=True)
  sys.exit(max(codes))


if __name__ == "__main__":
  main()
