"""Datasets for the trainer: embedded digits, the user's .npz, synthetic.

Every loader returns a :class:`Dataset` of NCHW float32 images, already
standardised with the training split's per-channel mean and standard
deviation, and integer labels. Bad input raises :class:`DataError` with a
message naming the problem; the command line prints it and exits with
status 2.
"""

import dataclasses
import pathlib
import sys

import numpy as np

TASKS = ("binary", "multiclass")
TEST_FRACTION = 0.2
MIN_EXAMPLES = 10


class DataError(ValueError):
  """A data set the trainer cannot use; the message says why."""


class MissingExtra(ImportError):
  """An optional dependency of the ``train`` extra is not installed."""


def require(module, purpose):
  """Imports ``module``, or says how to install the ``train`` extra."""
  import importlib
  try:
    return importlib.import_module(module)
  except ImportError:
    top = module.split(".")[0]
    package = {"sklearn": "scikit-learn"}.get(top, top)
    raise MissingExtra(
        f"{purpose} needs {package}, which is not installed; install the "
        f"trainer's dependencies with: pip install \"jaxloss[train]\""
    ) from None


@dataclasses.dataclass
class Dataset:
  """Train and test splits, NCHW float32 images, int32 labels."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  task: str
  num_classes: int
  source: dict
  mean: np.ndarray
  std: np.ndarray

  @property
  def num_outputs(self):
    return 1 if self.task == "binary" else self.num_classes

  @property
  def in_channels(self):
    return self.x_train.shape[1]

  @property
  def title(self):
    """The data in words, for figure titles."""
    name = self.source["name"]
    if name == "digits":
      return ("handwritten digits, odd vs even" if self.task == "binary"
              else "handwritten digits, ten classes")
    _, c, h, w = self.x_train.shape
    if name == "synthetic":
      return f"random {c}x{h}x{w} images"
    return f"{pathlib.Path(self.source['path']).name}, {self.num_classes} classes"

  def describe(self):
    _, c, h, w = self.x_train.shape
    return (f"{self.source['name']}: {len(self.y_train)} train / "
            f"{len(self.y_test)} test images of {c}x{h}x{w}, {self.task} "
            f"({self.num_classes} classes)")


def split(n, seed, test_fraction=TEST_FRACTION):
  """A fixed-seed permutation of ``range(n)`` cut into (train, test)."""
  order = np.random.default_rng(seed).permutation(n)
  n_test = max(1, int(round(n * test_fraction)))
  return np.sort(order[n_test:]), np.sort(order[:n_test])


def _standardise(x, train_idx, mean=None, std=None):
  if mean is None:
    mean = x[train_idx].mean(axis=(0, 2, 3))
    std = x[train_idx].std(axis=(0, 2, 3))
    std = np.where(std > 0, std, 1.0)
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return ((x - mean[None, :, None, None]) / std[None, :, None, None]
          ).astype(np.float32), mean, std


def _build(x, labels, task, num_classes, seed, source, mean=None, std=None):
  train_idx, test_idx = split(len(labels), seed)
  x, mean, std = _standardise(x, train_idx, mean, std)
  labels = labels.astype(np.int32)
  return Dataset(x[train_idx], labels[train_idx], x[test_idx],
                 labels[test_idx], task, num_classes, source, mean, std)


def _load_digits():
  """scikit-learn's ``load_digits()`` images and targets.

  Read straight from the CSV that scikit-learn ships when it is where
  ``load_digits`` reads it: importing scikit-learn takes longer than
  training. Otherwise through ``load_digits`` itself.
  """
  import importlib.util
  if sys.modules.get("sklearn", False) is None:  # Blocked, as in the tests.
    require("sklearn", "the embedded digits data set")
  spec = importlib.util.find_spec("sklearn")
  if spec is None:
    require("sklearn", "the embedded digits data set")
  csv = pathlib.Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
  if csv.is_file():
    table = np.loadtxt(csv, delimiter=",")
    if table.shape == (1797, 65):
      return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
  d = require("sklearn.datasets", "the embedded digits data set").load_digits()
  return d.images, d.target


def digits(task="binary", *, seed=0, mean=None, std=None):
  """scikit-learn's embedded UCI digits: 1797 8x8 images, no network.

  ``task="binary"`` labels odd digits 1 and even digits 0 (one logit);
  ``"multiclass"`` keeps the ten digits.
  """
  _check_task(task)
  images, target = _load_digits()
  x = images.astype(np.float32)[:, None, :, :]
  labels = target % 2 if task == "binary" else target
  return _build(x, labels, task, 2 if task == "binary" else 10, seed,
                {"name": "digits", "task": task, "seed": seed}, mean, std)


def synthetic(*, num_examples=32, size=512, seed=0, mean=None, std=None):
  """The tutorial's random [N, 3, size, size] images, with learnable labels.

  Each image is standard normal noise plus a per-image brightness offset
  drawn from U(-0.5, 0.5); its label is 1 when the offset is positive, so
  even the ``article`` model (which sees only channel means) can learn it.
  Meant for timing the tutorial's setting, not for accuracy.
  """
  if num_examples < MIN_EXAMPLES:
    raise DataError(f"--num-examples expected at least {MIN_EXAMPLES}, "
                    f"got {num_examples}")
  if size < 1:
    raise DataError(f"--size expected a positive int, got {size}")
  rng = np.random.default_rng(seed)
  offset = rng.uniform(-0.5, 0.5, num_examples).astype(np.float32)
  x = rng.standard_normal((num_examples, 3, size, size), np.float32)
  x += offset[:, None, None, None]
  return _build(x, (offset > 0).astype(np.int32), "binary", 2, seed,
                {"name": "synthetic", "num_examples": num_examples,
                 "size": size, "seed": seed}, mean, std)


def _check_task(task):
  if task not in TASKS:
    raise DataError(f"--task expected one of {TASKS}, got {task!r}")


def not_npz(path):
  """What ``path`` is, in words, when it is not an .npz archive; else None.

  ``np.load`` takes any file that is not a zip for a pickle, and reports a
  text file as "pickled (object) data": the magic bytes tell the truth.
  """
  import zipfile
  with open(path, "rb") as f:
    head = f.read(512)
  if head.startswith(b"PK"):
    return None if zipfile.is_zipfile(path) else (
        "a damaged or truncated zip archive")
  if not head:
    return "an empty file"
  if head.startswith(b"\x93NUMPY"):
    return "a single .npy array"
  if head.startswith(b"\x80"):
    return "a Python pickle"
  try:
    head.decode("utf-8")
    text = b"\0" not in head
  except UnicodeDecodeError as e:  # A multi-byte character cut at 512.
    text = e.start > len(head) - 4 and b"\0" not in head
  return "a text file" if text else "a file that is not a zip archive"


def load_npz(path, task=None, *, seed=0, mean=None, std=None):
  """The user's images: ``x`` [N, H, W] or [N, H, W, C], ``y`` [N] labels.

  Labels are integers in ``[0, K)``. ``task=None`` picks ``"binary"`` when
  the labels are all 0 or 1 and ``"multiclass"`` otherwise.
  """
  if task is not None:
    _check_task(task)
  path = pathlib.Path(path)
  expected = ("expected an .npz archive (numpy.savez) of arrays 'x' [N, H, W] "
              "or [N, H, W, C] and 'y' [N]")
  if path.is_dir():
    raise DataError(f"{path}: is a directory; {expected}")
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  kind = not_npz(path)
  if kind is not None:
    raise DataError(f"{path}: not an .npz archive: {expected}, got {kind}")
  try:
    archive = np.load(path, allow_pickle=False)
  except Exception as e:  # A damaged or truncated zip.
    raise DataError(f"{path}: cannot read as .npz: {type(e).__name__}: "
                    f"{e}") from None
  with archive:
    keys = list(archive.files)
    for key in ("x", "y"):
      if key not in keys:
        raise DataError(f"{path}: missing key {key!r} (expected arrays 'x' "
                        f"[N, H, W] or [N, H, W, C] and 'y' [N]; found "
                        f"{keys})")
    try:
      x, y = archive["x"], archive["y"]
    except Exception as e:
      raise DataError(f"{path}: cannot read 'x' and 'y': {e}") from None
  for key, value in (("x", x), ("y", y)):
    # NumPy hands back the raw bytes of a member that is not an .npy array.
    if not isinstance(value, np.ndarray):
      raise DataError(f"{path}: cannot read 'x' and 'y': member {key!r} is "
                      f"not an .npy array")
  x, y = _check_arrays(path, x, y)
  labels, task, num_classes = _check_labels(path, y, task)
  return _build(x, labels, task, num_classes, seed,
                {"name": "npz", "path": str(path.resolve()), "task": task,
                 "seed": seed}, mean, std)


def _check_arrays(path, x, y):
  if x.dtype.kind not in "biuf":
    raise DataError(f"{path}: 'x' expected numeric images, got dtype "
                    f"{x.dtype}")
  if x.ndim not in (3, 4):
    raise DataError(f"{path}: 'x' expected shape [N, H, W] or [N, H, W, C], "
                    f"got {list(x.shape)}")
  if y.ndim != 1:
    raise DataError(f"{path}: 'y' expected shape [N], got {list(y.shape)}")
  if len(y) != len(x):
    raise DataError(f"{path}: 'x' has {len(x)} images but 'y' has {len(y)} "
                    f"labels (shapes {list(x.shape)} and {list(y.shape)})")
  if len(x) < MIN_EXAMPLES:
    raise DataError(f"{path}: too few examples: {len(x)}, expected at least "
                    f"{MIN_EXAMPLES} to split into train and test")
  if min(x.shape[1:]) < 1:
    raise DataError(f"{path}: 'x' has an empty image axis: {list(x.shape)}")
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise DataError(f"{path}: 'x' contains NaN or infinite values")
  x = x[:, None] if x.ndim == 3 else np.transpose(x, (0, 3, 1, 2))
  return x, y


def _check_labels(path, y, task):
  if y.dtype.kind == "b":
    y = y.astype(np.int64)
  if y.dtype.kind == "f":
    if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
      bad = y[~np.isfinite(y) | (y != np.round(y))][:3]
      raise DataError(f"{path}: 'y' expected integer labels, got non-integer "
                      f"values such as {bad.tolist()}")
    y = y.astype(np.int64)
  if y.dtype.kind not in "iu":
    raise DataError(f"{path}: 'y' expected integer labels, got dtype "
                    f"{y.dtype}")
  if y.min() < 0:
    raise DataError(f"{path}: 'y' labels out of range: expected labels in "
                    f"[0, K), got {int(y.min())}")
  num_classes = int(y.max()) + 1
  if task is None:
    task = "binary" if num_classes <= 2 else "multiclass"
  if task == "binary" and num_classes > 2:
    raise DataError(f"{path}: 'y' labels out of range for --task binary: "
                    f"expected 0 or 1, got {int(y.max())}")
  if len(np.unique(y)) < 2:
    raise DataError(f"{path}: 'y' has a single class ({int(y[0])}); "
                    f"expected at least two")
  return y, task, max(num_classes, 2)


def load(source, *, mean=None, std=None):
  """Rebuilds a data set from the ``source`` record a checkpoint stores."""
  name = source["name"]
  if name == "digits":
    return digits(source["task"], seed=source["seed"], mean=mean, std=std)
  if name == "synthetic":
    return synthetic(num_examples=source["num_examples"],
                     size=source["size"], seed=source["seed"], mean=mean,
                     std=std)
  return load_npz(source["path"], source["task"], seed=source["seed"],
                  mean=mean, std=std)
