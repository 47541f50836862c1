"""The API reference and the README's tables, generated at build time.

The reference has one page per family: every public name of ``jaxloss``
goes on the page of the private module that defines it
(``jaxloss._<family>``), and every name of ``jaxloss.nn.__all__`` on the
``jaxloss.nn`` page, so a new function or class is documented the moment it
is exported. A module missing from :data:`FAMILIES` still gets a page, and a
warning that fails the ``-W`` build until it has a title here.

The porting tables, the deliberate differences and the performance tables
are sections of ``README.md``, copied into pages of their own with their
headings raised one level, so the two cannot drift apart.

This module imports no Sphinx at module level: the tests read
:func:`families` without it.
"""

import importlib
import inspect
import pathlib
import re

# Private module -> (page, title, one line), in the order of the reference.
FAMILIES = {
    "_multiclass": ("softmax", "Softmax cross entropy",
                    "Integer and probability labels, negative log "
                    "likelihood."),
    "_binary": ("binary", "Binary cross entropy",
                "On logits and on probabilities, and the sigmoid focal "
                "loss."),
    "_classification": ("classification",
                        "Margins, focal, poly and ranking losses",
                        "Hinge and perceptron losses, Keras's focal losses, "
                        "label smoothing, ranking."),
    "_sparsemax": ("sparsemax", "Sparsemax and Fenchel-Young losses",
                   "The sparsemax projection and its losses."),
    "_linear": ("linear", "Fused linear + cross entropy",
                "A language model's output layer and its loss, without the "
                "logits."),
    "_distillation": ("distillation", "Fused linear distillation",
                      "A student's output layer against a teacher's, by "
                      "forward or reverse KL or the generalized JSD, "
                      "without the logits."),
    "_divergence": ("divergence", "KL divergences",
                    "optax's and torch's Kullback-Leibler divergences."),
    "_regression": ("regression", "Regression",
                    "Squared, absolute, Huber, log-cosh, Poisson and Gaussian "
                    "losses."),
    "_embedding": ("embedding", "Embeddings, distances and contrastive losses",
                   "Cosine, triplet, ranking margins, NT-Xent and circle "
                   "losses."),
    "_segmentation": ("segmentation", "Segmentation",
                      "Dice and Tversky losses."),
    "_ctc": ("ctc", "Connectionist temporal classification",
             "CTC loss and its forward probabilities."),
    "_activations": ("activations", "Activations",
                     "Sigmoid and softmax, and their logarithms."),
    "_checked": ("checked", "Value checks",
                 "Checks of the values, raised even under jax.jit."),
    "_registry": ("registry", "Losses by name",
                  "Looking a loss up by name, for configuration files."),
}
NN_PAGE = ("nn", "torch.nn classes",
           "torch.nn's loss classes, with torch's arguments and numbers.")

# README section -> (page, title, text to keep: "all", "before" or "from"
# the marker). The marker splits the porting section: its tables, then the
# deliberate differences.
DIFFERENCES = "Where jaxloss deliberately differs:"
GUIDES = (
    ("Porting from torch.nn, optax and Keras", "porting",
     "Porting from torch.nn, optax and Keras", "before"),
    ("Porting from torch.nn, optax and Keras", "differences",
     "Deliberate differences", "from"),
    ("Nothing silently wrong", "robustness", "Nothing silently wrong", "all"),
    ("Fused linear + cross entropy", "fused", "Fused linear + cross entropy",
     "all"),
    ("Beyond one device", "sharding", "Beyond one device", "all"),
    ("Performance", "performance", "Performance", "all"),
)

DOCS = pathlib.Path(__file__).resolve().parent.parent
README = DOCS.parent / "README.md"


def _family_module(package, name, value):
  """The ``jaxloss._<family>`` module that defines ``value``."""
  module = getattr(inspect.unwrap(value), "__module__", None) or ""
  if module.startswith("jaxloss._"):
    return module.split(".")[1]
  # Re-homed for display (``CheckError.__module__ == "jaxloss"``): the
  # private module that holds the same object.
  for submodule in sorted(FAMILIES):
    try:
      held = getattr(importlib.import_module(f"jaxloss.{submodule}"), name,
                     None)
    except ImportError:
      continue
    if held is value:
      return submodule
  raise LookupError(f"jaxloss.{name}: defined in {module!r}, not in a "
                    f"jaxloss._<family> module")


def families():
  """``{module: [public names]}`` for ``jaxloss``, from the package itself."""
  import jaxloss
  found = {}
  for name in sorted(jaxloss.__all__):
    value = getattr(jaxloss, name)
    if inspect.ismodule(value):
      continue
    found.setdefault(_family_module(jaxloss, name, value), []).append(name)
  return found


def nn_names():
  import jaxloss.nn
  return sorted(jaxloss.nn.__all__)


def _directive(value):
  if inspect.isclass(value):
    return ("autoexception" if issubclass(value, BaseException)
            else "autoclass")
  return "autofunction"


def _page(title, intro, module, names):
  """reST for one family: a summary table, then every entry in full."""
  namespace = importlib.import_module(module)
  lines = [title, "=" * len(title), "", intro, "",
           f".. currentmodule:: {module}", "", ".. autosummary::", ""]
  lines += [f"   {name}" for name in names] + [""]
  for name in names:
    lines += [f".. {_directive(getattr(namespace, name))}:: {name}", ""]
  return "\n".join(lines)


def reference_pages():
  """``{page: reST}``, the index of the reference included, and warnings."""
  pages, warnings, toc = {}, [], []
  for module, names in sorted(
      families().items(),
      key=lambda item: list(FAMILIES).index(item[0])
      if item[0] in FAMILIES else len(FAMILIES)):
    if module in FAMILIES:
      page, title, intro = FAMILIES[module]
    else:
      page, title, intro = module.lstrip("_"), f"jaxloss.{module}", ""
      warnings.append(f"jaxloss.{module} ({', '.join(names)}) has no entry "
                      f"in FAMILIES of {pathlib.Path(__file__).name}: give "
                      f"its page a title")
    pages[page] = _page(title, intro, "jaxloss", names)
    toc.append(page)
  page, title, intro = NN_PAGE
  pages[page] = _page(title, intro + " ``jaxloss.nn.X(...)(input, target)`` "
                      "is ``torch.nn.X(...)(input, target)``.",
                      "jaxloss.nn", nn_names())
  toc.append(page)
  pages["index"] = "\n".join(
      ["API reference", "=============", "",
       "Every public function of ``jaxloss`` and every class of "
       "``jaxloss.nn``, by family.", "", ".. toctree::", "   :maxdepth: 1",
       ""] + [f"   {p}" for p in toc] + [""])
  return pages, warnings


def readme_sections():
  """``{heading: body}`` of the README's ``##`` sections."""
  sections, heading, body, fence = {}, None, [], False
  for line in README.read_text(encoding="utf-8").splitlines():
    if line.startswith("```"):
      fence = not fence
    if not fence and line.startswith("## "):
      if heading is not None:
        sections[heading] = "\n".join(body).strip("\n")
      heading, body = line[3:].strip(), []
    elif heading is not None:
      body.append(line)
  if heading is not None:
    sections[heading] = "\n".join(body).strip("\n")
  return sections


def _raise_headings(text):
  """``### x`` -> ``## x`` outside code fences: a section becomes a page."""
  out, fence = [], False
  for line in text.splitlines():
    if line.startswith("```"):
      fence = not fence
    if not fence and re.match(r"#{3,6} ", line):
      line = line[1:]
    out.append(line)
  return "\n".join(out)


def guide_pages():
  """``{page: Markdown}`` copied from the README's sections."""
  sections = readme_sections()
  pages = {}
  for heading, page, title, part in GUIDES:
    if heading not in sections:
      raise LookupError(f"README.md has no section '## {heading}' for the "
                        f"'{page}' page")
    text = sections[heading]
    if part != "all":
      if DIFFERENCES not in text:
        raise LookupError(f"README.md's '## {heading}' lacks "
                          f"{DIFFERENCES!r}")
      before, _, after = text.partition(DIFFERENCES)
      # The differences run from the marker to the next code block.
      differences, fence, rest = after.partition("\n```")
      if part == "before":
        text = (before.rstrip() + "\n\nWhere jaxloss deliberately differs "
                "from them: [Deliberate differences](differences.md).\n\n"
                + fence.lstrip("\n") + rest)
      else:
        text = ("Where jaxloss deliberately differs from torch.nn, optax "
                "and Keras:" + differences.rstrip())
    pages[page] = f"# {title}\n\n{_raise_headings(text)}\n"
  pages["index"] = "\n".join(
      ["# Guides", "", "From the README: porting, robustness, the fused "
       "loss, sharding and performance.", "", "```{toctree}",
       ":maxdepth: 1", ""] + [p for _, p, _, _ in GUIDES] + ["```", ""])
  return pages


def _write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  if not path.exists() or path.read_text(encoding="utf-8") != text:
    path.write_text(text, encoding="utf-8")


def generate(app=None):
  """Writes ``docs/api/*.rst`` and ``docs/guide/*.md``; returns warnings."""
  pages, warnings = reference_pages()
  for directory, suffix, written in ((DOCS / "api", ".rst", pages),
                                     (DOCS / "guide", ".md", guide_pages())):
    for stale in directory.glob(f"*{suffix}"):
      if stale.stem not in written:
        stale.unlink()
    for page, text in written.items():
      _write(directory / f"{page}{suffix}", text)
  return warnings


def _builder_inited(app):
  from sphinx.util import logging
  logger = logging.getLogger(__name__)
  for warning in generate(app):
    logger.warning(warning, type="jaxloss", subtype="family")


def setup(app):
  app.connect("builder-inited", _builder_inited)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
