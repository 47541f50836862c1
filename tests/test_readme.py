"""The README's complete programs run as written, each in a fresh process."""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def program(heading):
  """The first Python block under a ``## heading`` of the README."""
  text = README.read_text()
  section = text[text.index(f"\n## {heading}\n"):]
  section = section[:section.find("\n## ", 1)]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run(code):
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_example():
  run(program("Example") + "\nprint(loss, grads.shape)\n")


@pytest.mark.slow
def test_sharded_train_step():
  # The 2-D mesh (data x model) of 8 CPU devices, the vocabulary-parallel
  # fused loss in a jitted train step: the loss goes down.
  out = run(program("Beyond one device"))
  losses = [float(v) for v in re.findall(r"step \d: loss (\S+)", out)]
  assert len(losses) == 5
  assert all(b < a for a, b in zip(losses, losses[1:]))
