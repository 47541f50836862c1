"""Training loop: one jitted step, optax, per-epoch metrics and checkpoints.

The loop is jax's ``mnist_classifier_fromscratch.py`` grown up a little:
``loss_fn`` and ``accuracy`` over ``model.apply``, one jitted ``step``
(``value_and_grad``, optax ``update``, ``apply_updates``), a fixed-seed
shuffle per epoch. The same seed gives the same numbers.

A checkpoint holds everything a resumed run needs to continue exactly where
the run stopped: the parameters, the optimizer state (whose step count drives
the learning-rate schedule), the optimizer step and epoch reached, and the
plan (``Config``: the total number of epochs and the epochs at which
``--extend`` restarted the schedule). The data order of epoch ``e`` is drawn
from ``numpy.random.default_rng([seed, e])``, a stream of its own per epoch,
so the seed and the epoch are the whole of its random state.
"""

import csv
import dataclasses
import functools
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxloss
from jaxloss.train import data as data_lib
from jaxloss.train import losses as losses_lib
from jaxloss.train import model as model_lib

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
CHECKPOINT = "checkpoint.npz"
FORMAT = 2
READABLE_FORMATS = (1, 2)
# A run whose epoch-mean train loss exceeds this many times the first batch's
# (or 1, if that is smaller) has diverged: no classification loss of a
# learning model grows a thousandfold.
DIVERGENCE = 1e3


class ConfigError(ValueError):
  """A hyperparameter out of its range."""


class Diverged(RuntimeError):
  """The training loss became non-finite, or blew up: the run was stopped."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Hyperparameters of a run; stored in the checkpoint."""
  loss: str = "bce-logits"
  label_smoothing: float = 0.0
  gamma: float = 2.0
  optimizer: str = "adam"
  lr: float = 3e-3
  weight_decay: float = 1e-4
  momentum: float = 0.9
  schedule: str = "cosine"
  batch_size: int = 64
  epochs: int = 20
  seed: int = 0
  # Epochs after which ``--extend`` began a new cosine cycle, ascending.
  restarts: tuple = ()

  def __post_init__(self):
    object.__setattr__(self, "restarts", tuple(self.restarts))
    if self.optimizer not in OPTIMIZERS:
      raise ConfigError(f"--optimizer expected one of {OPTIMIZERS}, got "
                        f"{self.optimizer!r}")
    if self.schedule not in SCHEDULES:
      raise ConfigError(f"--schedule expected one of {SCHEDULES}, got "
                        f"{self.schedule!r}")
    if not self.lr > 0:
      raise ConfigError(f"--lr expected a positive value, got {self.lr}")
    if not self.weight_decay >= 0:
      raise ConfigError(f"--weight-decay expected a value >= 0, got "
                        f"{self.weight_decay}")
    if not 0 <= self.momentum < 1:
      raise ConfigError(f"--momentum expected a value in [0, 1), got "
                        f"{self.momentum}")
    for name in ("batch_size", "epochs"):
      if getattr(self, name) < 1:
        raise ConfigError(f"--{name.replace('_', '-')} expected a positive "
                          f"int, got {getattr(self, name)}")
    bounds = (0, *self.restarts, self.epochs)
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
      raise ConfigError(f"restarts expected ascending epochs inside (0, "
                        f"{self.epochs}), got {list(self.restarts)}")

  def extended(self, epochs):
    """The plan with ``epochs`` more epochs, in a new schedule cycle."""
    if not (isinstance(epochs, int) and epochs >= 1):
      raise ConfigError(f"--extend expected a positive int, got {epochs}")
    return dataclasses.replace(self, epochs=self.epochs + epochs,
                               restarts=(*self.restarts, self.epochs))


def loss_fn(params, images, labels, spec, loss):
  """Mean loss of a batch, and the logits (for accuracy)."""
  logits = model_lib.apply(params, images, spec)
  return jnp.mean(loss(logits, labels)), logits


def accuracy(logits, labels):
  return jnp.mean(losses_lib.predictions(logits) == labels)


def make_schedule(config, steps_per_epoch):
  """The learning rate at each optimizer step of the planned run.

  ``"constant"``: ``config.lr`` throughout. ``"cosine"``: a cosine decay from
  ``config.lr`` to 0 over the first ``config.epochs`` (or up to the first
  restart); each restart (``--extend``) begins a new cycle that warms up
  linearly from 0, where the previous one ended, to ``config.lr`` over a
  tenth of its steps, then decays to 0 by its end. The rate is a function of
  the step alone, so a resumed run follows it exactly.
  """
  if config.schedule == "constant":
    return optax.constant_schedule(config.lr)
  bounds = [b * steps_per_epoch for b in (0, *config.restarts, config.epochs)]
  cycles = [optax.cosine_decay_schedule(config.lr, bounds[1])]
  for start, end in zip(bounds[1:], bounds[2:]):
    warmup = max(1, (end - start) // 10)
    cycles.append(optax.warmup_cosine_decay_schedule(
        0.0, config.lr, warmup, max(end - start, warmup + 1), 0.0))
  if len(cycles) == 1:
    return cycles[0]
  return optax.join_schedules(cycles, bounds[1:-1])


def make_optimizer(config, steps_per_epoch):
  lr = make_schedule(config, steps_per_epoch)
  if config.optimizer == "adam":
    return optax.adam(lr), lr
  if config.optimizer == "adamw":
    return optax.adamw(lr, weight_decay=config.weight_decay), lr
  return optax.sgd(lr, momentum=config.momentum), lr


def make_loss(config, task):
  return losses_lib.build(config.loss, task,
                          label_smoothing=config.label_smoothing,
                          gamma=config.gamma)


@functools.lru_cache(maxsize=16)
def make_step(spec, config, task, steps_per_epoch):
  """The optimizer, its schedule, the train step and the initialiser.

  ``step(params, opt_state, images, labels)`` trains on one batch. Cached
  on everything but the seed, so runs that differ only in their seed compile
  once.
  """
  loss = make_loss(config, task)
  optimizer, schedule = make_optimizer(config, steps_per_epoch)

  def step(params, opt_state, images, labels):
    (value, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, images, labels, spec, loss)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, value, accuracy(logits, labels)

  def init(seed):
    params = model_lib.init_params(jax.random.PRNGKey(seed), spec)
    return params, optimizer.init(params)

  # Jitted whole, as small programs: called op by op, the optimizer's
  # init and the schedule would compile each of their operations.
  return optimizer, jax.jit(schedule), jax.jit(step), jax.jit(init)


@functools.lru_cache(maxsize=16)
def _batch_sums(spec, config, task):
  loss = make_loss(config, task)

  @jax.jit
  def sums(params, images, labels, keep):
    logits = model_lib.apply(params, images, spec)
    per_example = jnp.where(keep, loss(logits, labels), 0.0)
    correct = jnp.where(keep, losses_lib.predictions(logits) == labels, False)
    return jnp.sum(per_example), jnp.sum(correct)
  return sums


def _loss_only(config):
  return Config(loss=config.loss, label_smoothing=config.label_smoothing,
                gamma=config.gamma)


def make_evaluate(spec, config, task, batch_size):
  """``evaluate(params, x, y) -> (mean loss, accuracy)`` in padded batches.

  The compiled function is cached on the model and the loss, so the final
  report reuses what the per-epoch evaluation compiled.
  """
  sums = _batch_sums(spec, _loss_only(config), task)

  def evaluate(params, x, y):
    n = len(y)
    total_loss, total_correct = 0.0, 0
    for start in range(0, n, batch_size):
      idx = np.arange(start, start + batch_size)
      keep = idx < n
      idx = np.minimum(idx, n - 1)
      l, c = sums(params, x[idx], y[idx], keep)
      total_loss += float(l)
      total_correct += int(c)
    return total_loss / n, total_correct / n
  return evaluate


@dataclasses.dataclass
class State:
  """What a checkpoint holds: enough to evaluate or resume."""
  spec: model_lib.Spec
  config: Config
  source: dict
  mean: np.ndarray
  std: np.ndarray
  params: dict
  opt_leaves: list
  epoch: int
  history: list
  step: int | None = None  # Optimizer steps taken; None in format 1.
  first_loss: float | None = None  # The first batch's, the divergence scale.


def save(path, state):
  config = dataclasses.asdict(state.config)
  config["restarts"] = list(config["restarts"])
  meta = {"format": FORMAT, "jaxloss": jaxloss.__version__,
          "spec": state.spec.to_dict(), "config": config,
          "data": state.source, "mean": np.asarray(state.mean).tolist(),
          "std": np.asarray(state.std).tolist(), "epoch": state.epoch,
          "step": state.step, "first_loss": state.first_loss,
          "history": state.history}
  arrays = {"meta": np.array(json.dumps(meta))}
  for keys, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    name = "/".join(k.key for k in keys)
    arrays[f"params/{name}"] = np.asarray(leaf)
  for i, leaf in enumerate(state.opt_leaves):
    arrays[f"opt/{i:04d}"] = np.asarray(leaf)
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **arrays)
  tmp.replace(path)


class CheckpointError(ValueError):
  """A checkpoint that cannot be read."""


def load(path):
  """Reads a checkpoint written by :func:`save` (a file or its directory)."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / CHECKPOINT
  if not path.is_file():
    raise CheckpointError(f"{path}: no such checkpoint")
  expected = (f"expected the {CHECKPOINT} that `jaxloss train --out DIR` "
              f"writes")
  kind = data_lib.not_npz(path)
  if kind is not None:
    raise CheckpointError(f"{path}: not a jaxloss checkpoint: {expected}, "
                          f"got {kind}")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
  except Exception as e:  # A damaged zip, or an .npz of other arrays.
    raise CheckpointError(f"{path}: not a jaxloss checkpoint: {expected}; "
                          f"{type(e).__name__}: {e}") from None
  if meta.get("format") not in READABLE_FORMATS:
    raise CheckpointError(f"{path}: checkpoint format {meta.get('format')}, "
                          f"expected one of {READABLE_FORMATS}")
  params = {}
  for key, value in arrays.items():
    if key.startswith("params/"):
      layer, name = key[len("params/"):].split("/")
      params.setdefault(layer, {})[name] = jnp.asarray(value)
  opt_leaves = [jnp.asarray(arrays[k]) for k in sorted(arrays)
                if k.startswith("opt/")]
  return State(model_lib.Spec(**meta["spec"]), Config(**meta["config"]),
               meta["data"], np.asarray(meta["mean"], np.float32),
               np.asarray(meta["std"], np.float32), params, opt_leaves,
               meta["epoch"], meta["history"], meta.get("step"),
               meta.get("first_loss"))


def write_metrics(out, history):
  out = pathlib.Path(out)
  (out / "metrics.json").write_text(json.dumps(history, indent=1) + "\n")
  columns = list(history[0]) if history else []
  with open(out / "metrics.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)


def _bars(quiet):
  """Progress bars only on a terminal: redirected, a bar is ``\\r`` noise."""
  return not quiet and sys.stderr.isatty()


def _progress(total, desc, bars):
  if not bars:
    return None
  tqdm = data_lib.require("tqdm", "the progress bar").tqdm
  return tqdm(total=total, desc=desc, leave=False, file=sys.stderr,
              dynamic_ncols=True)


def _say(message, quiet, bars):
  if quiet:
    return
  if bars:
    data_lib.require("tqdm", "the progress bar").tqdm.write(
        message, file=sys.stderr)
  else:
    print(message, file=sys.stderr, flush=True)


def _diverged(message, epoch, out):
  if out is None:
    where = "Nothing was saved (no --out)"
  elif epoch > 1:
    where = (f"{out} keeps epoch {epoch - 1}, the last good one: jaxloss "
             f"eval --checkpoint {out}")
  else:
    where = f"No epoch finished: {out} holds no checkpoint"
  return Diverged(f"{message}; stopped. {where}. A smaller --lr may help")


def curves_title(config, dataset):
  """The training curves' title, in words: the loss and the data."""
  return (f"{losses_lib.title(config.loss, dataset.task, config)}, trained "
          f"on {dataset.title}")


def train(dataset, config, spec=None, *, out=None, resume=None, quiet=False):
  """Trains on ``dataset``; returns the final :class:`State`.

  Stops with :class:`Diverged` at the first non-finite batch loss, or at the
  end of an epoch whose mean train loss exceeds ``DIVERGENCE`` times the
  first batch's (or 1): the epoch is not saved, so ``out`` keeps the last
  good one.

  Args:
    dataset: a :class:`jaxloss.train.data.Dataset`.
    config: a :class:`Config`; ``config.epochs`` is the planned total.
    spec: a :class:`jaxloss.train.model.Spec`; default: the default model
      sized for ``dataset``.
    out: optional directory for ``metrics.json``, ``metrics.csv``,
      ``curves.png`` and ``checkpoint.npz`` (rewritten after each epoch).
    resume: optional :class:`State` to continue from, at its optimizer step,
      up to ``config.epochs`` epochs in all. ``config`` may extend the
      checkpoint's plan (:meth:`Config.extended`), not change it.
    quiet: no progress bars or per-epoch lines. Bars are drawn only when
      stderr is a terminal; otherwise each epoch prints one plain line.
  """
  if spec is None:
    spec = model_lib.Spec(in_channels=dataset.in_channels,
                          num_outputs=dataset.num_outputs)
  make_loss(config, dataset.task)  # Fail on a bad loss before any work.
  bars = _bars(quiet)
  if bars:
    data_lib.require("tqdm", "the progress bar")
  if out is not None:
    data_lib.require("matplotlib", "writing curves.png")
    pathlib.Path(out).mkdir(parents=True, exist_ok=True)
  n_train = len(dataset.y_train)
  batch_size = min(config.batch_size, n_train)
  steps = n_train // batch_size
  # The compiled step depends on neither the seed nor, with a constant
  # schedule, the length of the run: runs differing only there share it.
  cosine = config.schedule == "cosine"
  key = dataclasses.replace(config, seed=0,
                            epochs=config.epochs if cosine else 1,
                            restarts=config.restarts if cosine else ())
  optimizer, schedule, step, init = make_step(spec, key, dataset.task,
                                              steps if cosine else 1)
  evaluate = make_evaluate(spec, config, dataset.task, batch_size)

  if resume is None:
    params, opt_state = init(config.seed)
    first, history = 1, []
  else:
    _check_resume(resume, config, steps)
    params = resume.params
    treedef = jax.tree_util.tree_structure(
        jax.eval_shape(optimizer.init, params))
    if treedef.num_leaves != len(resume.opt_leaves):
      raise CheckpointError(
          f"checkpoint holds {len(resume.opt_leaves)} optimizer arrays, "
          f"--optimizer {config.optimizer} needs {treedef.num_leaves}")
    opt_state = jax.tree_util.tree_unflatten(treedef, resume.opt_leaves)
    first, history = resume.epoch + 1, list(resume.history)
  x, y = dataset.x_train, dataset.y_train
  elapsed = history[-1]["seconds"] if history else 0.0
  start = time.perf_counter() - elapsed
  first_loss = None if resume is None else resume.first_loss
  state = resume

  for epoch in range(first, config.epochs + 1):
    order = np.random.default_rng([config.seed, epoch]).permutation(n_train)
    bar = _progress(steps, f"epoch {epoch}/{config.epochs}", bars)
    loss_sum = correct_sum = 0.0
    try:
      for i in range(steps):
        idx = order[i * batch_size:(i + 1) * batch_size]
        params, opt_state, value, acc = step(params, opt_state, x[idx],
                                             y[idx])
        value = float(value)
        if not math.isfinite(value):
          raise _diverged(
              f"the train loss is {value} at epoch {epoch}, step {i + 1} of "
              f"{steps} (--lr {config.lr:g})", epoch, out)
        if first_loss is None:
          first_loss = value
        loss_sum += value
        correct_sum += float(acc)
        if bar is not None:
          bar.set_postfix(loss=f"{loss_sum / (i + 1):.4f}", refresh=False)
          bar.update()
    finally:
      if bar is not None:
        bar.close()
    train_loss = loss_sum / steps
    limit = DIVERGENCE * max(first_loss, 1.0)
    if train_loss > limit:
      raise _diverged(
          f"the train loss diverged: {train_loss:.4g} at epoch {epoch}, over "
          f"{DIVERGENCE:g} times its first value ({first_loss:.4g}) "
          f"(--lr {config.lr:g})", epoch, out)
    test_loss, test_acc = evaluate(params, dataset.x_test, dataset.y_test)
    record = {"epoch": epoch, "train_loss": train_loss,
              "train_accuracy": correct_sum / steps, "test_loss": test_loss,
              "test_accuracy": test_acc,
              "lr": float(schedule(epoch * steps)),
              "seconds": round(time.perf_counter() - start, 3)}
    history.append(record)
    _say(f"epoch {epoch:3d}/{config.epochs}  train loss "
         f"{record['train_loss']:.4f}  test loss {test_loss:.4f}  test "
         f"accuracy {test_acc:.4f}"
         f"  {record['seconds']:.1f} s", quiet, bars)
    state = State(spec, config, dataset.source, dataset.mean, dataset.std,
                  params, jax.tree_util.tree_leaves(opt_state), epoch,
                  history, epoch * steps, first_loss)
    if out is not None:
      save(pathlib.Path(out) / CHECKPOINT, state)
      write_metrics(out, history)

  if out is not None and history:
    from jaxloss.train import plots
    plots.curves(history, pathlib.Path(out) / "curves.png",
                 title=curves_title(config, dataset))
  return state


def _check_resume(resume, config, steps):
  """The run about to continue ``resume`` keeps its plan, or extends it."""
  planned = resume.config
  extended = (config.epochs > planned.epochs
              and planned.extended(config.epochs - planned.epochs) == config)
  if config != planned and not extended:
    raise CheckpointError(
        f"a resumed run keeps the checkpoint's settings and plan "
        f"({planned.epochs} epochs), or extends it with --extend")
  if resume.step is not None and resume.step != resume.epoch * steps:
    raise CheckpointError(
        f"the checkpoint stopped at step {resume.step} after {resume.epoch} "
        f"epochs, but its data now gives {steps} steps per epoch: the data "
        f"changed since it was saved")


def evaluate_state(state, dataset):
  """``{"train": (loss, acc), "test": (loss, acc)}`` of a trained state.

  A split with no examples is left out.
  """
  batch_size = state.config.batch_size
  if len(dataset.y_train):
    batch_size = min(batch_size, len(dataset.y_train))
  evaluate = make_evaluate(state.spec, state.config, dataset.task,
                           batch_size)
  result = {}
  for split, (x, y) in (("train", (dataset.x_train, dataset.y_train)),
                        ("test", (dataset.x_test, dataset.y_test))):
    if len(y):
      result[split] = evaluate(state.params, x, y)
  return result


def table(result):
  lines = [f"{'':6s} {'loss':>10s} {'accuracy':>10s}"]
  for split, (loss, acc) in result.items():
    lines.append(f"{split:6s} {loss:10.4f} {acc:10.4f}")
  return "\n".join(lines)
