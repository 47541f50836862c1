"""``jaxloss article``: the tutorial's example and where its two losses part."""

import numpy as np
import pytest

from jaxloss import cli
from jaxloss.train import article


@pytest.fixture(scope="module")
def results():
  return article.run(seed=0, size=512)


def test_tutorial_batch_and_model(results):
  assert results["logits"].shape == (3,)
  assert results["logits"].dtype == np.float32
  np.testing.assert_array_equal(results["targets"], [1.0, 1.0, 0.0])


def test_loss_both_ways_about_069_and_agreeing(results):
  prob, logit = results["prob_loss"], results["logit_loss"]
  assert 0.6 < logit < 0.8  # The untrained model's logits sit near 0.
  assert abs(prob - logit) < 1e-6
  np.testing.assert_allclose(results["prob_grad"], results["logit_grad"],
                             rtol=1e-5, atol=1e-7)
  # d mean BCE / d logit = (sigmoid(x) - y) / 3.
  x, y = results["logits"].astype(np.float64), results["targets"]
  np.testing.assert_allclose(results["logit_grad"],
                             (1 / (1 + np.exp(-x)) - y) / 3, rtol=1e-5)
  np.testing.assert_allclose(
      logit, np.mean(np.logaddexp(0, x) - y * x), rtol=1e-6)


def test_saturated_logits_part_the_two_ways(results):
  x = results["saturated_logits"]
  y = results["saturated_labels"]
  prob_loss, logit_loss = (results["saturated_prob_loss"],
                           results["saturated_logit_loss"])
  prob_grad, logit_grad = (results["saturated_prob_grad"],
                           results["saturated_logit_grad"])
  exact = np.logaddexp(0, x.astype(np.float64)) - y * x
  np.testing.assert_allclose(logit_loss, exact, rtol=1e-6)
  np.testing.assert_allclose(logit_grad, 1 / (1 + np.exp(-x.astype(
      np.float64))) - y, rtol=1e-6, atol=1e-30)
  rows = {(float(a), float(b)): i for i, (a, b) in enumerate(zip(x, y))}
  # Unsaturated: both ways agree, values and gradients.
  i = rows[(5.0, 0.0)]
  assert prob_loss[i] == pytest.approx(logit_loss[i], rel=1e-5)
  assert prob_grad[i] == pytest.approx(logit_grad[i], rel=1e-5)
  # sigmoid rounds to exactly 1 or 0: the clamp (100) and a zero gradient.
  for key in ((20.0, 0.0), (40.0, 0.0), (120.0, 0.0), (-120.0, 1.0)):
    i = rows[key]
    assert prob_loss[i] == 100.0, key
    assert prob_grad[i] == 0.0, key
    assert abs(logit_grad[i]) == 1.0, key
  assert logit_loss[rows[(20.0, 0.0)]] == 20.0
  assert logit_loss[rows[(120.0, 0.0)]] == 120.0
  # sigmoid(-50) is still representable: the value is right, the gradient
  # has all but vanished under torch's 1e-12 floor on p (1 - p).
  i = rows[(-50.0, 1.0)]
  assert prob_loss[i] == pytest.approx(50.0, rel=1e-6)
  assert 0 < -prob_grad[i] < 1e-9 and logit_grad[i] == -1.0


def test_report(results):
  text = article.report(results)
  assert "random [3, 3, 512, 512] batch" in text
  assert "targets [1, 1, 0]" in text
  for line in text.splitlines():
    if line.lstrip().startswith(("binary_cross_entropy(sigmoid",
                                 "sigmoid_binary_cross_entropy(logits")):
      assert float(line.split()[-1]) == pytest.approx(results["logit_loss"],
                                                      abs=1e-6)
  assert "Where the two ways part" in text
  rows = [l.split() for l in text.splitlines() if l.startswith("       20")]
  assert rows and rows[0][:2] == ["20", "0"] and rows[0][3:5] == ["100", "20"]


def test_cli_article(results, capsys):
  assert cli.main(["article"]) == 0
  out = capsys.readouterr().out
  assert out.strip() == article.report(results)
  assert cli.main(["article", "--size", "0"]) == 2
  assert "jaxloss article: error: --size expected a positive int, got 0" in (
      capsys.readouterr().err)


def test_seed_changes_the_batch(results):
  other = article.run(seed=1, size=512)
  assert not np.array_equal(other["logits"], results["logits"])
  assert 0.6 < other["logit_loss"] < 0.8
  np.testing.assert_array_equal(article.run(seed=0, size=512)["logits"],
                                results["logits"])


def test_readme_quotes_what_jaxloss_article_prints(results):
  import pathlib
  readme = (pathlib.Path(__file__).resolve().parent.parent /
            "README.md").read_text()
  row = next(line for line in readme.splitlines()
             if line.startswith("| `BCELoss` against `BCEWithLogitsLoss`"))
  assert "`jaxloss article`" in row and "for seed 0" in row
  assert f"({results['logit_loss']:.7f} both, for seed 0" in row
  assert f"{results['prob_loss']:.7f}" == f"{results['logit_loss']:.7f}"
