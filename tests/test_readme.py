"""Every Python block of the README runs on its own, in a fresh process, and
prints what its comments say it prints."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
# Blocks that take long enough to belong to the slow set (still run in CI).
SLOW = {"Fused linear + cross entropy", "Beyond one device"}


def blocks():
  """``(heading, code)`` for every ```python block, in order."""
  found, heading = [], None
  for match in re.finditer(r"^## ([^\n]+)$|^```python\n(.*?)^```$",
                           README.read_text(), re.M | re.S):
    if match.group(1) is not None:
      heading = match.group(1)
    else:
      found.append((heading, match.group(2)))
  return found


BLOCKS = blocks()


def expected(code):
  """What a block says it prints: ``(stdout lines, last stderr line)``.

  Output is written as comment lines right after a ``print(...)`` line; an
  exception as a comment run that starts with ``# Traceback`` and ends with
  the exception's last line.
  """
  lines = code.splitlines()
  stdout, error, printed = [], None, False
  for i, line in enumerate(lines):
    if line.startswith("# Traceback (most recent call last):"):
      error = [l for l in lines[i:] if l.startswith("# ")][-1][2:]
      break
    if printed and line.startswith("# "):
      stdout.append(line[2:])
    else:
      printed = line.lstrip().startswith("print(")
  return stdout, error


def run(code):
  # As a user runs it: without the suite's XLA_FLAGS (its lower LLVM
  # optimisation level can move the last printed digit).
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, timeout=300, check=False, env=env)


def test_the_readme_has_its_blocks():
  headings = [heading for heading, _ in BLOCKS]
  for heading in ("Example", "Porting from torch.nn, optax and Keras",
                  "Nothing silently wrong", "Fused linear + cross entropy",
                  "Beyond one device"):
    assert heading in headings, heading


def test_expected_output_is_read_from_comments():
  code = ("x = 1  # not output\nprint(x)\n# 1\n# 2\n\n# a remark\n"
          "f(x)\n# Traceback (most recent call last):\n#   ...\n"
          "# ValueError: bad\n")
  assert expected(code) == (["1", "2"], "ValueError: bad")


@pytest.mark.parametrize(
    "heading, code",
    [pytest.param(*block, marks=[pytest.mark.slow] if block[0] in SLOW
                  else [], id=f"{i}-{block[0]}")
     for i, block in enumerate(BLOCKS)])
def test_block_runs_alone_and_prints_what_it_shows(heading, code):
  stdout, error = expected(code)
  result = run(code)
  if error is None:
    assert result.returncode == 0, result.stderr[-3000:]
  else:
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1] == error
  if stdout:
    assert result.stdout.splitlines() == stdout
  if heading == "Beyond one device":
    # The 2-D mesh (data x model) of 8 CPU devices, the vocabulary-parallel
    # fused loss in a jitted train step: the loss goes down.
    losses = [float(v) for v in re.findall(r"step \d: loss (\S+)",
                                           result.stdout)]
    assert len(losses) == 5
    assert all(b < a for a, b in zip(losses, losses[1:]))
