"""Trains the digits CNN once per loss: test accuracy and seconds.

Each run is its own ``jaxloss train`` process, so its time includes
compilation (and the reported wall time includes starting Python and
importing JAX), as a user would see it. Writes
``results/train_losses-<device>.json`` and ``.md``, and redraws the
README's figure with ``jaxloss plot``.

  python benchmarks/train_losses.py            # every loss, 20 epochs
  python benchmarks/train_losses.py --only ce  # one loss, both tasks
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import common  # noqa: E402

from jaxloss.train import losses  # noqa: E402

FIGURES = common.RESULTS / "figures"


def runs(only):
  rows = []
  for task in ("binary", "multiclass"):
    for name in losses.names(task):
      if only and name not in only:
        continue
      rows.append({"task": task, "loss": name, "options": "",
                   "model": "default",
                   "args": ["--task", task, "--loss", name]})
  if not only:
    for task, name in (("binary", "bce-logits"), ("multiclass", "ce")):
      rows.append({"task": task, "loss": name,
                   "options": "--label-smoothing 0.1", "model": "default",
                   "args": ["--task", task, "--loss", name,
                            "--label-smoothing", "0.1"]})
    for task in ("binary", "multiclass"):
      rows.append({"task": task, "loss": losses.DEFAULT[task],
                   "options": "", "model": "article",
                   "args": ["--task", task, "--model", "article"]})
  return rows


def script():
  found = shutil.which("jaxloss", path=os.path.dirname(sys.executable))
  return [found] if found else [sys.executable, "-m", "jaxloss.cli"]


def train(args, extra):
  with tempfile.TemporaryDirectory() as out:
    command = [*script(), "train", *args, *extra, "--quiet", "--out", out]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    history = json.loads((pathlib.Path(out) / "metrics.json").read_text())
  return history, wall


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=None,
                      help="override the trainer's default (20)")
  parser.add_argument("--only", nargs="*", help="loss names to run")
  parser.add_argument("--no-synthetic", action="store_true",
                      help="skip the tutorial-sized timing run")
  args = parser.parse_args()
  extra = [] if args.epochs is None else ["--epochs", str(args.epochs)]
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  results = []
  for run in runs(args.only):
    history, wall = train(run["args"], extra)
    last = history[-1]
    row = {"task": run["task"], "loss": run["loss"],
           "options": run["options"], "model": run["model"],
           "command": "jaxloss train " + " ".join(run["args"] + extra),
           "epochs": last["epoch"],
           "test accuracy": round(last["test_accuracy"], 4),
           "test loss": round(last["test_loss"], 4),
           "train seconds": round(last["seconds"], 1),
           "wall seconds": round(wall, 1)}
    print(json.dumps(row), flush=True)
    results.append(row)

  timing = None
  if not args.no_synthetic and not args.only:
    synthetic = ["--synthetic", "--size", "512", "--model", "article",
                 "--epochs", "3"]
    history, wall = train(synthetic, [])
    first, last = history[0]["seconds"], history[-1]["seconds"]
    timing = {"command": "jaxloss train " + " ".join(synthetic),
              "images": "32 x [3, 512, 512] (26 train), batch 8",
              "first epoch seconds (with compilation)": round(first, 1),
              "seconds per later epoch": round((last - first) / 2, 2),
              "wall seconds": round(wall, 1)}
    print(json.dumps(timing), flush=True)

  columns = ["task", "loss", "options", "model", "test accuracy",
             "train seconds", "wall seconds"]
  markdown = common.table(results, columns)
  path = common.write_json("train_losses", {
      "note": "each row is one `jaxloss train` process on the embedded "
              "digits; train seconds include compilation, wall seconds "
              "include starting Python and importing JAX",
      "load average at start": load, "results": results,
      "synthetic timing": timing})
  md = path.with_suffix(".md")
  text = (f"Digits, 20 epochs unless noted, on {common.device_name()} "
          f"(load average {load:.1f} at start).\n\n{markdown}\n")
  if timing:
    text += (f"\nTutorial-sized timing (`{timing['command']}`): "
             f"{timing['seconds per later epoch']} s per epoch, "
             f"{timing['first epoch seconds (with compilation)']} s for the "
             f"first (with compilation).\n")
  md.write_text(text)
  print(md.read_text())
  subprocess.run([*script(), "plot", "--only", "saturation", "--out",
                  str(FIGURES)], check=True)
  print(path, md)


if __name__ == "__main__":
  main()
