"""benchmarks/suite.py and its report at tiny sizes: every loss accounted for.

Times are never asserted; these check that the suite runs, that every loss
is either timed or listed with the reason it is not, and that the plain jnp
formulas compute what jaxloss computes.
"""

import contextlib
import io
import json
import pathlib
import sys
import time

import jax
import numpy as np
import pytest

import jaxloss

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import narrow_rows  # noqa: E402
import page_faults  # noqa: E402
import report  # noqa: E402
import row_forms  # noqa: E402
import suite  # noqa: E402
import tracing  # noqa: E402


def test_every_loss_is_timed_or_listed():
  todo, skipped = suite.plan()
  timed = dict(todo)
  assert set(jaxloss.names()) <= set(timed) | set(skipped)
  assert not set(timed) & set(skipped)
  for name, baseline in timed.items():
    assert baseline == ("optax" if hasattr(suite.optax.losses, name)
                        else "plain"), name


def test_a_new_loss_without_a_builder_is_listed(monkeypatch):
  names = jaxloss.names()
  monkeypatch.setattr(suite.jaxloss, "names",
                      lambda: (*names, "brand_new_loss"))
  todo, skipped = suite.plan()
  assert "brand_new_loss" not in dict(todo)
  assert skipped["brand_new_loss"] == "no builder in benchmarks/suite.py"


def test_plain_formulas_compute_what_jaxloss_computes():
  # The suite's other shapes change the sizes, not the formulas: the default
  # set is enough here, and test_suite_writes_what_report_prints runs "wide".
  pairs = {}
  for i, name in enumerate(sorted(suite.PLAIN)):
    builder, _ = suite.BUILDERS[name]
    args, kw = builder(2048, suite.SHAPES["default"], np.float32,
                       jax.random.key(i))
    assert not kw, name
    pairs[name] = args

  @jax.jit
  def both(pairs):
    return {name: (getattr(jaxloss, name)(*args), suite.PLAIN[name](*args))
            for name, args in pairs.items()}
  for name, (ours, plain) in both(pairs).items():
    np.testing.assert_allclose(ours, plain, rtol=2e-5, atol=2e-5,
                               err_msg=name)


def test_interleaved_rounds_take_one_mode_at_a_time():
  ran = []

  def call(key, ms=0.0):
    def fn():
      ran.append(key)
      time.sleep(ms / 1e3)
      return jax.numpy.zeros(())
    return fn, None

  keys = [(impl, mode) for mode in ("value", "grad")
          for impl in ("jaxloss", "optax", "torch")] + [("copy", "copy")]
  calls = {k: call(k) for k in keys}
  times = common.interleaved_ms(calls, 3, shared=("copy",))
  assert {k: len(t) for k, t in times.items()} == {
      **{k: 3 for k in keys}, ("copy", "copy"): 6}
  # Every value before any gradient; the copy in both modes' rounds.
  modes = [m for _, m in ran if m != "copy"]
  assert modes == sorted(modes, key=("value", "grad").index)
  first_grad = modes.index("grad")
  copies = [i for i, (_, m) in enumerate(ran) if m == "copy"]
  assert copies[0] < ran.index(("jaxloss", "grad")) < copies[-1]
  assert first_grad == 9
  # Rounds are shuffled: some round does not run in the calls' order.
  rounds = [tuple(ran[i:i + 4]) for i in range(0, len(ran), 4)]
  assert any(r != tuple(k for k in keys if k in r) for r in rounds)
  # More rounds, up to the limit, while a mode's time lasts.
  slow = {("a", "value"): call(("a", "value"), 2.0)}
  assert len(common.interleaved_ms(slow, 1, seconds=0.05, max_rounds=8)[
      "a", "value"]) == 8


def test_suite_times_each_mode_apart(monkeypatch):
  seen = []
  real = common.interleaved_ms

  def spy(calls, *args, **kwargs):
    seen.append(list(calls))
    return real(calls, *args, **kwargs)
  monkeypatch.setattr(common, "interleaved_ms", spy)
  args, kw = suite.BUILDERS["l2_loss"][0](64, suite.SHAPES["narrow"],
                                          jax.numpy.float32, jax.random.key(0))
  rows = suite.run_one("l2_loss", args, kw, "optax", 2, 0.0, 1)
  assert [r["mode"] for r in rows] == ["value", "grad"]
  assert all(r["rounds"] == 2 for r in rows)
  keys, = seen
  assert {m for _, m in keys} == {"value", "grad"}


def test_suite_reduction_mean_calls_the_losses_own_mean(monkeypatch):
  # jaxloss's own reduction="mean" (the baseline's mean of its output as
  # ever); the same numbers for an elementwise loss.
  calls = []
  real = jaxloss.poisson_nll_loss

  def spy(*args, **kwargs):
    calls.append(kwargs.get("reduction", "none"))
    return real(*args, **kwargs)
  monkeypatch.setattr(jaxloss, "poisson_nll_loss", spy)
  args, kw = suite.BUILDERS["poisson_nll_loss"][0](
      64, suite.SHAPES["narrow"], jax.numpy.float32, jax.random.key(0))
  rows = suite.run_one("poisson_nll_loss", args, kw, "plain", 1, 0.0, 1,
                       reduction="mean")
  assert "mean" in calls
  assert rows[1]["max_rel_diff"] < 1e-6


def test_suite_reduction_mean_refuses_other_losses(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", [
      "suite.py", "--reduction", "mean", "--only", "ntxent,huber_loss",
      "--no-write"])
  with pytest.raises(SystemExit):
    suite.main()
  assert ("only losses with a reduction keyword, not ntxent"
          in capsys.readouterr().err)


def test_suite_reduction_mean_times_only_a_mean_of_the_rows():
  # A row loss's own mean is timed where it is the mean of its rows; a
  # weighted one (torch's mean over the labels' weights) is not.
  x = jax.random.normal(jax.random.key(0), (8, 5))
  labels = jax.numpy.arange(8) % 5
  fn = jaxloss.softmax_cross_entropy_with_integer_labels
  assert suite.mean_differs(fn, (x, labels), {}) is None
  why = suite.mean_differs(fn, (x, labels),
                           {"weight": jax.numpy.arange(1.0, 6.0)})
  assert why.startswith('its "mean"')
  assert suite.mean_differs(jaxloss.ntxent, (x, labels), {}).startswith(
      'reduction="mean" fails')


@pytest.mark.slow
def test_suite_writes_what_report_prints(tmp_path, monkeypatch):
  monkeypatch.setattr(common, "RESULTS", tmp_path)
  monkeypatch.setattr(report, "RESULTS", tmp_path)
  monkeypatch.setattr(sys, "argv", [
      "suite.py", "--elements", "4096", "--rounds", "1", "--seconds", "0",
      "--compile-repeats", "2", "--shapes", "wide",
      "--only", "l2_loss,mse_loss"])
  with contextlib.redirect_stdout(io.StringIO()):
    suite.main()
  path, = tmp_path.glob("suite_wide-*.json")
  data = json.loads(path.read_text())
  rows = {(r["loss"], r["mode"]): r for r in data["results"]}
  assert set(rows) == {(n, m) for n in ("l2_loss", "mse_loss")
                       for m in ("value", "grad")}
  for (name, _), r in rows.items():
    assert r["baseline"] == ("optax" if name == "l2_loss" else "plain")
    assert len(r["jaxloss_compile_runs_ms"]) == 2
    assert r["jaxloss_compile_ms"] > 0 and r["baseline_compile_ms"] > 0
    assert r["max_rel_diff"] < 1e-5
  device = path.stem.split("-", 1)[1]
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    report.suite(device, "wide")
  text = out.getvalue()
  assert "| `l2_loss` |" in text and "| `mse_loss` |" in text
  assert "vs optax: " in text and "vs plain: " in text
  assert "repeats of one function: median " in text
  # Tracing, summed over the rows: the value's and the gradient's.
  for mode, what in (("value", "value"), ("grad", "value and gradient")):
    total = sum(r["jaxloss_compile_parts_ms"][0] for (_, m), r in rows.items()
                if m == mode)
    assert f"{what} " in text and f"; {total:.0f} against " in text


def test_suite_update_replaces_only_the_losses_it_measures(tmp_path,
                                                           monkeypatch):
  monkeypatch.setattr(common, "RESULTS", tmp_path)
  base = ["suite.py", "--elements", "2048", "--rounds", "1", "--seconds",
          "0", "--compile-repeats", "1", "--shapes", "narrow"]

  def run(*extra):
    monkeypatch.setattr(sys, "argv", base + list(extra))
    with contextlib.redirect_stdout(io.StringIO()):
      suite.main()
    path, = tmp_path.glob("suite_narrow-*.json")
    return json.loads(path.read_text())

  with pytest.raises(SystemExit, match="no results file"):
    run("--only", "l2_loss", "--update")
  first = run("--only", "l2_loss,mse_loss,huber_loss")
  second = run("--only", "mse_loss", "--update")
  old = {(r["loss"], r["mode"]): r for r in first["results"]}
  new = {(r["loss"], r["mode"]): r for r in second["results"]}
  # The same rows in the same order; only mse_loss's measured again, and
  # marked with the command that did.
  assert [(r["loss"], r["mode"]) for r in second["results"]] == [
      (r["loss"], r["mode"]) for r in first["results"]]
  for key, row in new.items():
    if key[0] == "mse_loss":
      assert row["measured_by"].endswith("--only mse_loss --update")
      assert row["jaxloss_compile_runs_ms"] != old[key][
          "jaxloss_compile_runs_ms"]
    else:
      assert row == old[key]
  assert second["command"] == first["command"]
  assert [u["losses"] for u in second["updates"]] == [["mse_loss"]]
  monkeypatch.setattr(report, "RESULTS", tmp_path)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    report.suite(next(tmp_path.glob("*.json")).stem.split("-", 1)[1],
                 "narrow")
  assert "- rows measured again by `python benchmarks/suite.py " in (
      out.getvalue())
  with pytest.raises(SystemExit, match="other settings"):
    run("--only", "mse_loss", "--update", "--rounds", "2")
  # A file from before the suite recorded its reduction: "none".
  path, = tmp_path.glob("suite_narrow-*.json")
  path.write_text(json.dumps({k: v for k, v in json.loads(
      path.read_text()).items() if k != "reduction"}))
  assert len(run("--only", "l2_loss", "--update")["updates"]) == 2
  with pytest.raises(SystemExit, match="reduction: 'none'"):
    run("--only", "l2_loss", "--update", "--reduction", "mean")
  with pytest.raises(SystemExit):
    run("--update")


def test_tracing_times_every_way_and_restores_the_stack(monkeypatch):
  monkeypatch.setattr(sys, "argv", [
      "tracing.py", "--elements", "4096", "--repeats", "1",
      "huber_loss", "mse_loss"])
  top = tracing._jit._find_top_trace
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    tracing.main()
  assert tracing._jit._find_top_trace is top
  rows = [line.split(" | ") for line in out.getvalue().splitlines()[2:]]
  assert [(r[0].strip("| "), r[1], r[2]) for r in rows] == [
      (name, mode, when) for name in ("huber_loss", "mse_loss")
      for mode in ("value", "grad") for when in ("first", "later")]
  assert all(float(x) > 0 for r in rows for x in r[3:5])
  assert rows[0][5].endswith("(optax) |") and rows[-1][5].endswith(
      "(plain) |")


def test_page_faults_counts_both_implementations(monkeypatch):
  monkeypatch.setattr(sys, "argv", [
      "page_faults.py", "--elements", "4096", "multiclass_hinge_loss",
      "mse_loss"])
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    page_faults.main()
  rows = [line.split(" | ") for line in out.getvalue().splitlines()[2:]]
  assert [(r[0].strip("| "), r[1], r[2]) for r in rows] == [
      (name, mode, impl)
      for name, baseline in (("multiclass_hinge_loss", "optax"),
                             ("mse_loss", "plain"))
      for mode in ("value", "grad") for impl in ("jaxloss", baseline)]
  assert all(float(r[3]) >= 0 for r in rows)


def sweep(module, argv, tmp_path, monkeypatch):
  """Runs a sweep over row lengths into ``tmp_path``: (its JSON, what
  ``report`` prints of it)."""
  monkeypatch.setattr(common, "RESULTS", tmp_path)
  monkeypatch.setattr(report, "RESULTS", tmp_path)
  name = module.__name__
  monkeypatch.setattr(sys, "argv", [
      f"{name}.py", "--elements", "4096", "--rounds", "1", "--seconds", "0",
      *argv])
  with contextlib.redirect_stdout(io.StringIO()):
    module.main()
  path, = tmp_path.glob(f"{name}-*.json")
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    getattr(report, name)(path.stem.split("-", 1)[1])
  return json.loads(path.read_text()), out.getvalue()


def test_row_forms_writes_what_report_prints(tmp_path, monkeypatch):
  data, text = sweep(row_forms, ["--widths", "8,64", "--only",
                                 "cosine_similarity"], tmp_path, monkeypatch)
  assert {(r["loss"], r["width"], r["mode"], r["picked"])
          for r in data["results"]} == {
              ("cosine_similarity", w, mode, picked)
              for w, picked in ((8, "short"), (64, "long"))
              for mode in ("value", "grad")}
  assert all(r[f"{form}_max_rel_diff"] < 1e-5 for r in data["results"]
             for form in row_forms.FORMS)
  # The threshold is put back.
  assert row_forms._rows.SHORT_ROWS == data["short_rows"]
  assert "| loss | mode | 8 | 64 |" in text
  assert "| `cosine_similarity` | value | " in text


def test_narrow_rows_writes_what_report_prints(tmp_path, monkeypatch):
  data, text = sweep(narrow_rows, ["--widths", "1,16", "--only",
                                   "huber_loss,mse_loss"], tmp_path,
                     monkeypatch)
  assert {(r["loss"], r["width"], r["mode"], r["baseline"])
          for r in data["results"]} == {
              (name, w, mode, baseline)
              for name, baseline in (("huber_loss", "optax"),
                                     ("mse_loss", "plain"))
              for w in (1, 16) for mode in ("value", "grad")}
  assert all(r["max_rel_diff"] < 1e-5 for r in data["results"])
  assert all(r["jaxloss_compile_ms"] > 0 and r["baseline_compile_ms"] > 0
             for r in data["results"])
  assert text.count("| loss | baseline | rows of 1 | rows of 16 |") == 2
  assert "Compile time over the baseline's" in text
  assert text.count("| `huber_loss` | optax | ") == 2
  assert text.count("| `mse_loss` | plain | ") == 2
