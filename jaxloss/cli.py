"""The ``jaxloss`` command: article, train, eval, plot.

Errors the user can fix (a bad data file, an unknown loss, an output
directory that cannot be written, a missing optional dependency) print
``jaxloss <command>: error: <message>`` and exit with status 2, like
argparse's own usage errors. A run that fails on its way (a diverging loss, a
write that fails mid-run) prints the same way and exits with status 1.
"""

import argparse
import os
import pathlib
import sys

DIGITS_DEFAULTS = {"task": "binary", "model": "default", "loss": None,
                   "label_smoothing": 0.0, "gamma": 2.0, "optimizer": "adam",
                   "lr": 3e-3, "weight_decay": 1e-4, "momentum": 0.9,
                   "schedule": "cosine", "batch_size": 64, "epochs": 20,
                   "seed": 0, "channels": 32, "grid": 4, "hidden": 128,
                   "num_examples": 32, "size": 64}
# The tutorial's image side. 32 such images take about 8 s an epoch on 2 CPU
# cores, minutes for a run (11 under load), hence the smaller default above.
ARTICLE_SIZE = 512
# Options a resumed run takes from its checkpoint.
RESUMED = ("task", "model", "loss", "label_smoothing", "gamma", "optimizer",
           "lr", "weight_decay", "momentum", "schedule", "batch_size", "seed",
           "channels", "grid", "hidden", "data", "synthetic", "num_examples",
           "size")

POSITIVE = ("batch_size", "epochs", "channels", "grid", "hidden",
            "num_examples", "size")


class CommandError(Exception):
  """A problem the user can fix; printed without a traceback."""


class RunError(Exception):
  """A run that failed on its way; printed without a traceback, status 1."""


def _parser():
  parser = argparse.ArgumentParser(
      prog="jaxloss",
      description="jaxloss: the tutorial's example, a small trainer, and "
                  "its figures.")
  commands = parser.add_subparsers(dest="command", required=True,
                                   metavar="COMMAND")

  p = commands.add_parser(
      "article", help="the tutorial's CNN and its loss computed both ways",
      description="Builds the tutorial's model (conv 3x3 3->10, average pool "
                  "over the whole image, linear 10->50, linear 50->1) without "
                  "Flax, runs it on a random [3, 3, size, size] batch with "
                  "targets [1, 1, 0], prints the loss as BCELoss and as "
                  "BCEWithLogitsLoss would, and shows where the two part.")
  p.add_argument("--seed", type=int, default=0, help="random seed (0)")
  p.add_argument("--size", type=int, default=512,
                 help="image side (512, the tutorial's; smaller is quicker)")

  p = commands.add_parser(
      "train", help="train the tutorial's CNN with a jaxloss loss",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Trains a small CNN (plain JAX, optax) on the UCI digits "
                  "that scikit-learn embeds, on your own .npz, or on the "
                  "tutorial's random images, with a loss chosen by name.",
      epilog="""\
progress:
  One line on stderr says what is trained (data, model, loss, optimizer).
  On a terminal each epoch shows a progress bar; redirected to a file, each
  epoch prints one plain line instead. --quiet drops both. The final table
  goes to stdout.

stopping and resuming:
  Training stops at the first non-finite batch loss, or after an epoch whose
  mean train loss is over 1000 times the first batch's (a diverging run),
  with status 1; --out keeps the last good epoch. Interrupted (Ctrl-C), --out
  keeps the last finished epoch. --resume continues a run to the number of
  epochs it planned, at the optimizer step, learning rate, optimizer state
  and data order where it stopped: the result is that of an uninterrupted
  run. To train past the plan, --resume --extend N adds N epochs; with the
  cosine schedule they form a new cycle that warms up linearly from 0 (where
  the last one ended) to the peak --lr over a tenth of its steps, then
  decays to 0 again.""")
  data = p.add_argument_group("data")
  source = data.add_mutually_exclusive_group()
  source.add_argument("--data", metavar="PATH.npz",
                      help="your images: arrays x [N, H, W] or [N, H, W, C] "
                           "and y [N] integer labels (default: the digits)")
  source.add_argument("--synthetic", action="store_true", default=None,
                      help="the tutorial's random [N, 3, size, size] images, "
                           "for timing; the tutorial's own size is --size "
                           "512")
  data.add_argument("--task", choices=("binary", "multiclass"),
                    help="digits: odd vs even (binary, default) or the ten "
                         "digits; --data: inferred from the labels")
  data.add_argument("--num-examples", type=int,
                    help="--synthetic: number of images (32)")
  data.add_argument("--size", type=int,
                    help="--synthetic: image side (64: 20 epochs in seconds; "
                         "the tutorial's 512 takes minutes on a CPU)")
  model = p.add_argument_group("model")
  model.add_argument("--model", choices=("default", "article"),
                     help="default: conv+ReLU, pool to a grid, linear+ReLU, "
                          "linear; article: the tutorial's exact stack")
  model.add_argument("--channels", type=int, help="conv channels (32)")
  model.add_argument("--grid", type=int, help="pooled map side (4)")
  model.add_argument("--hidden", type=int, help="hidden width (128)")
  loss = p.add_argument_group("loss")
  from jaxloss.train import losses as losses_lib
  loss.add_argument(
      "--loss", help="; ".join(
          f"{task}: " + ", ".join(
              n + (" (default)" if n == losses_lib.DEFAULT[task] else "")
              for n in losses_lib.names(task))
          for task in ("binary", "multiclass")))
  loss.add_argument("--label-smoothing", type=float,
                    help="bce-logits and ce (0)")
  loss.add_argument("--gamma", type=float, help="focal exponent (2)")
  opt = p.add_argument_group("optimisation")
  opt.add_argument("--optimizer", choices=("adam", "adamw", "sgd"),
                   help="adam (default), adamw, or sgd with momentum 0.9")
  opt.add_argument("--lr", type=float, help="peak learning rate (3e-3)")
  opt.add_argument("--weight-decay", type=float, help="adamw (1e-4)")
  opt.add_argument("--momentum", type=float, help="sgd (0.9)")
  opt.add_argument("--schedule", choices=("cosine", "constant"),
                   help="cosine decay to 0 over the planned epochs "
                        "(default) or constant")
  opt.add_argument("--batch-size", type=int, help="64 (digits, npz), 8 "
                                                  "(--synthetic)")
  opt.add_argument("--epochs", type=int, help="the planned number of "
                                              "epochs (20)")
  opt.add_argument("--seed", type=int, help="0; the same seed gives the "
                                            "same numbers")
  run = p.add_argument_group("output")
  run.add_argument("--out", metavar="DIR",
                   help="write metrics.json, metrics.csv, curves.png and "
                        "checkpoint.npz here")
  run.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out to the epochs it "
                        "planned, where it stopped")
  run.add_argument("--extend", type=int, metavar="N",
                   help="with --resume: train N epochs past the plan, in a "
                        "new learning-rate cycle")
  run.add_argument("--quiet", action="store_true",
                   help="no progress bars or per-epoch lines")

  p = commands.add_parser(
      "eval", help="reload a checkpoint and report its accuracy",
      description="Reloads a checkpoint written by `jaxloss train --out` "
                  "and reports loss and accuracy on its train and test "
                  "splits, or on every example of --data.")
  p.add_argument("--checkpoint", required=True, metavar="PATH",
                 help="checkpoint.npz, or the --out directory holding it")
  p.add_argument("--data", metavar="PATH.npz",
                 help="evaluate on all of this file's examples instead")

  p = commands.add_parser(
      "plot", help="draw the tutorial's figures as PNG files",
      description="Draws the sigmoid and its derivative, the two branches "
                  "of binary cross entropy, softmax([1, 2, 3]), the "
                  "five-class example losses, and where BCE on "
                  "probabilities saturates in float32.")
  p.add_argument("--out", required=True, metavar="DIR",
                 help="directory for the PNG files")
  p.add_argument("--only", metavar="NAME[,NAME]",
                 help="comma-separated subset of: sigmoid, bce_branches, "
                      "softmax, five_class, saturation")
  return parser


def _article(args):
  from jaxloss.train import article
  if args.size < 1:
    raise CommandError(f"--size expected a positive int, got {args.size}")
  print(article.report(article.run(args.seed, args.size)))


def _given(args):
  return {k for k in RESUMED if getattr(args, k, None) is not None}


def _settings(args):
  """The run's settings: the command line over the defaults."""
  s = dict(DIGITS_DEFAULTS)
  if args.synthetic:
    s["batch_size"] = 8
  s.update({k: v for k, v in vars(args).items() if v is not None})
  return s


def _epochs(n):
  return f"{n} epoch{'' if n == 1 else 's'}"


def _output_dir(path, create=True):
  """``path`` as a directory this process can write, or a CommandError."""
  out = pathlib.Path(path)
  if create:
    try:
      out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
      raise CommandError(f"--out {path}: expected a directory, got a "
                         f"file") from None
    except OSError as e:
      raise CommandError(f"--out {path}: cannot create the directory: "
                         f"{e.strerror}") from None
  elif not out.is_dir():
    raise CommandError(f"--out {path}: no such directory")
  if not os.access(out, os.W_OK | os.X_OK):
    raise CommandError(f"--out {path}: the directory is not writable")
  return out


def _resume(args):
  """The saved state, its data set and the plan to finish (or None)."""
  from jaxloss.train import data as data_lib
  from jaxloss.train import trainer
  if args.out is None:
    raise CommandError("--resume needs --out DIR, the run to continue")
  given = sorted(_given(args))
  if given:
    raise CommandError(
        f"--resume takes its settings from the checkpoint; drop "
        f"{', '.join('--' + k.replace('_', '-') for k in given)} (only "
        f"--extend, --out and --quiet apply)")
  state = trainer.load(pathlib.Path(args.out) / trainer.CHECKPOINT)
  planned = state.config.epochs
  if args.epochs is not None:
    raise CommandError(
        f"--resume continues the run to the {_epochs(planned)} it planned; "
        f"drop --epochs {args.epochs}, or add epochs past the plan with "
        f"--extend N")
  _output_dir(args.out, create=False)
  config = state.config
  if args.extend is not None:
    if args.extend < 1:
      raise CommandError(f"--extend expected a positive int, got "
                         f"{args.extend}")
    config = config.extended(args.extend)
  elif state.epoch >= planned:
    last = state.history[-1] if state.history else {}
    accuracy = (f" (test accuracy {last['test_accuracy']:.4f})"
                if "test_accuracy" in last else "")
    print(f"{args.out}: the run already finished the {_epochs(planned)} it "
          f"planned{accuracy}; nothing to do. To train further, add epochs "
          f"past the plan: jaxloss train --out {args.out} --resume --extend "
          f"N")
    return None
  dataset = data_lib.load(state.source, mean=state.mean, std=state.std)
  return state, dataset, config


def _train(args):
  from jaxloss.train import data as data_lib
  from jaxloss.train import model as model_lib
  from jaxloss.train import trainer

  if args.resume:
    resumed = _resume(args)
    if resumed is None:
      return
    state, dataset, config = resumed
    spec = state.spec
    what = (f"resuming {args.out} after epoch {state.epoch} of "
            f"{config.epochs}")
  else:
    if args.extend is not None:
      raise CommandError("--extend adds epochs to a saved run: use it with "
                         "--resume --out DIR")
    s = _settings(args)
    for k in POSITIVE:
      if not s[k] >= 1:
        raise CommandError(f"--{k.replace('_', '-')} expected a positive "
                           f"int, got {s[k]}")
    if args.data is not None:
      dataset = data_lib.load_npz(args.data, args.task, seed=s["seed"])
    elif args.synthetic:
      if args.task == "multiclass":
        raise CommandError("--synthetic is a binary task")
      dataset = data_lib.synthetic(num_examples=s["num_examples"],
                                   size=s["size"], seed=s["seed"])
    else:
      for k in ("num_examples", "size"):
        if getattr(args, k) is not None:
          raise CommandError(f"--{k.replace('_', '-')} applies to "
                             f"--synthetic only")
      dataset = data_lib.digits(s["task"], seed=s["seed"])
    if s["model"] == "article":
      for k in ("channels", "grid", "hidden"):
        if getattr(args, k) is not None:
          raise CommandError(f"--{k} does not apply to --model article, "
                             f"whose widths are the tutorial's")
      spec = model_lib.Spec.article(dataset.in_channels, dataset.num_outputs)
    else:
      spec = model_lib.Spec(dataset.in_channels, dataset.num_outputs,
                            channels=s["channels"], grid=s["grid"],
                            hidden=s["hidden"])
    from jaxloss.train import losses as losses_lib
    config = trainer.Config(
        loss=s["loss"] or losses_lib.DEFAULT[dataset.task],
        label_smoothing=s["label_smoothing"], gamma=s["gamma"],
        optimizer=s["optimizer"], lr=s["lr"],
        weight_decay=s["weight_decay"], momentum=s["momentum"],
        schedule=s["schedule"], batch_size=s["batch_size"],
        epochs=s["epochs"], seed=s["seed"])
    trainer.make_loss(config, dataset.task)  # A bad --loss fails here.
    if args.out is not None:
      _output_dir(args.out)
    state = None
    what = _epochs(config.epochs)
    if args.synthetic and s["size"] >= ARTICLE_SIZE // 2:
      print(f"jaxloss train: warning: {len(dataset.y_train)} training "
            f"images of 3x{s['size']}x{s['size']} take seconds an epoch on "
            f"a CPU, minutes for the run; the default --size "
            f"{DIGITS_DEFAULTS['size']} trains in seconds", file=sys.stderr)

  print(f"{dataset.describe()}; model {spec.model} "
        f"({spec.num_params} parameters); loss "
        f"{config.loss}; {config.optimizer} lr {config.lr:g} "
        f"{config.schedule}, batch {config.batch_size}, {what}, seed "
        f"{config.seed}", file=sys.stderr, flush=True)
  try:
    final = trainer.train(dataset, config, spec, out=args.out, resume=state,
                          quiet=args.quiet)
  except trainer.Diverged as e:
    raise RunError(e) from None
  print(trainer.table(trainer.evaluate_state(final, dataset)))
  if final.history:
    print(f"{final.history[-1]['seconds']:.1f} s for "
          f"{_epochs(final.epoch)}")
  if args.out is not None:
    print(f"wrote metrics.json, metrics.csv, curves.png and checkpoint.npz "
          f"to {args.out}")


def _eval(args):
  import numpy as np
  from jaxloss.train import data as data_lib
  from jaxloss.train import trainer
  state = trainer.load(args.checkpoint)
  if args.data is None:
    dataset = data_lib.load(state.source, mean=state.mean, std=state.std)
  else:
    dataset = data_lib.load_npz(args.data, state.source.get("task"),
                                seed=state.config.seed, mean=state.mean,
                                std=state.std)
    if dataset.in_channels != state.spec.in_channels:
      raise CommandError(
          f"{args.data}: images have {dataset.in_channels} channels, the "
          f"checkpoint's model takes {state.spec.in_channels}")
    if (dataset.task == "multiclass"
        and dataset.num_classes > state.spec.num_outputs):
      raise CommandError(
          f"{args.data}: labels go up to {dataset.num_classes - 1}, the "
          f"checkpoint's model has {state.spec.num_outputs} classes")
    dataset.x_test = np.concatenate([dataset.x_train, dataset.x_test])
    dataset.y_test = np.concatenate([dataset.y_train, dataset.y_test])
    dataset.x_train = dataset.x_train[:0]
    dataset.y_train = dataset.y_train[:0]
  print(f"{args.checkpoint}: epoch {state.epoch}, loss {state.config.loss}, "
        f"model {state.spec.model}")
  result = trainer.evaluate_state(state, dataset)
  print(trainer.table(result))
  print(f"test accuracy {result['test'][1]:.4f}")


def _plot(args):
  from jaxloss.train import plots
  _output_dir(args.out)
  only = None
  if args.only:
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in plots.FIGURES]
    if unknown or not only:
      raise CommandError(f"--only expected names from "
                         f"{', '.join(plots.FIGURES)}, got {args.only!r}")
  for path in plots.figures(args.out, only):
    print(path)


def main(argv=None):
  """Runs ``jaxloss`` with ``argv`` (default: the command line).

  Returns the exit status: 0 on success, 2 on a usage or data error
  (argparse's own usage errors exit 2 through ``SystemExit``), 1 when a run
  fails on its way (a diverging loss, a failed write), 130 on Ctrl-C.
  """
  args = _parser().parse_args(argv)
  command = {"article": _article, "train": _train, "eval": _eval,
             "plot": _plot}[args.command]
  from jaxloss.train import data as data_lib
  from jaxloss.train import losses as losses_lib
  from jaxloss.train import trainer
  try:
    command(args)
  except (CommandError, data_lib.DataError, data_lib.MissingExtra,
          losses_lib.LossError, trainer.CheckpointError,
          trainer.ConfigError) as e:
    print(f"jaxloss {args.command}: error: {e}", file=sys.stderr)
    return 2
  except RunError as e:
    print(f"jaxloss {args.command}: error: {e}", file=sys.stderr)
    return 1
  except OSError as e:  # A disk that fills up, a directory removed mid-run.
    where = f"{e.filename}: " if e.filename else ""
    print(f"jaxloss {args.command}: error: {where}{e.strerror or e}",
          file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    hint = ""
    if args.command == "train" and args.out is not None:
      hint = (f"; {args.out} holds the last finished epoch: continue with "
              f"jaxloss train --out {args.out} --resume")
    print(f"jaxloss {args.command}: interrupted{hint}", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
