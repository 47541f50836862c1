"""Sphinx configuration: the API reference from the docstrings.

Build, warnings as errors: ``python -m sphinx -W --keep-going -b html docs
docs/_build/html``. The pages under ``api/`` and ``guide/`` are generated
at build time by ``_ext/jaxloss_reference.py``.
"""

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # This checkout's jaxloss first.

import jaxloss  # noqa: E402

project = "jaxloss"
author = "the jaxloss authors"
copyright = "the jaxloss authors"  # noqa: A001
release = version = jaxloss.__version__

extensions = [
    "jaxloss_reference",
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_ext"]
root_doc = "index"

# Google-style docstrings: Args, Returns, Raises, Example, References, and
# the jaxloss.nn classes' "Call:" section (the signature of __call__).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = ["Call"]
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_inherit_docstrings = False
autosummary_generate = False

myst_heading_anchors = 3

html_theme = "furo"
html_title = f"jaxloss {release}"
html_show_sourcelink = False
