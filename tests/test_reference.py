"""The API reference: every public name on a family page, and in the site."""

import importlib.util
import pathlib
import zlib

import pytest

import jaxloss

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def extension():
  spec = importlib.util.spec_from_file_location(
      "jaxloss_reference", DOCS / "_ext" / "jaxloss_reference.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def public():
  """``jaxloss.X`` for every public name, ``jaxloss.nn.X`` for the classes."""
  names = {f"jaxloss.{name}" for name in jaxloss.__all__
           if not name == "nn"}
  return names | {f"jaxloss.nn.{name}" for name in jaxloss.nn.__all__}


def test_every_public_name_has_a_titled_family():
  ext = extension()
  families = ext.families()
  unmapped = sorted(set(families) - set(ext.FAMILIES))
  assert not unmapped, (f"add {unmapped} to FAMILIES in "
                        f"docs/_ext/jaxloss_reference.py")
  listed = [name for names in families.values() for name in names]
  assert sorted(listed) == sorted(n for n in jaxloss.__all__ if n != "nn")
  assert families["_checked"] == ["CheckError", "checked"]
  assert "softmax_cross_entropy" in families["_multiclass"]
  assert ext.nn_names() == sorted(jaxloss.nn.__all__)
  pages, warnings = ext.reference_pages()
  assert not warnings
  assert set(pages) == {page for page, _, _ in ext.FAMILIES.values()} | {
      "nn", "index"}


def test_a_module_without_a_title_warns(monkeypatch):
  ext = extension()
  monkeypatch.delitem(ext.FAMILIES, "_ctc")
  pages, warnings = ext.reference_pages()
  assert warnings == [
      "jaxloss._ctc (ctc_loss, ctc_loss_with_forward_probs) has no entry in "
      "FAMILIES of jaxloss_reference.py: give its page a title"]
  assert ".. autofunction:: ctc_loss\n" in pages["ctc"]


def test_guides_are_the_readmes_sections():
  ext = extension()
  pages = ext.guide_pages()
  readme = (DOCS.parent / "README.md").read_text()
  # Every table row of the porting and performance sections, verbatim.
  for page, heading in (("porting", "## Porting from torch.nn"),
                        ("performance", "## Performance")):
    section = readme[readme.index(heading):]
    section = section[:section.index("\n## ", 1)]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert rows and all(row in pages[page] for row in rows), page
  assert pages["differences"].startswith("# Deliberate differences\n")
  assert "- A mean over no kept element (every label ignored)" in (
      pages["differences"])
  assert "- A mean over no kept element" not in pages["porting"]
  assert "\n## Cross entropy at the memory-bandwidth limit\n" in (
      pages["performance"])


def inventory(path):
  """``{name: uri}`` of the Python objects in a Sphinx ``objects.inv``."""
  content = path.read_bytes()
  for _ in range(4):  # Four header lines, then zlib.
    content = content[content.index(b"\n") + 1:]
  entries = {}
  for line in zlib.decompress(content).decode().splitlines():
    name, role, _, uri = line.split(" ", 4)[:4]
    if role.startswith("py:"):
      entries[name] = uri.replace("$", name)
  return entries


@pytest.mark.slow
# myst-parser's use of Sphinx APIs deprecated for Sphinx 11: not ours.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_built_reference_documents_every_public_name(tmp_path):
  pytest.importorskip("sphinx")
  pytest.importorskip("myst_parser")
  pytest.importorskip("furo")
  from sphinx.cmd.build import build_main
  out = tmp_path / "html"
  status = build_main(["-W", "--keep-going", "-q", "-b", "html", "-d",
                       str(tmp_path / "doctrees"), str(DOCS), str(out)])
  assert status == 0
  entries = inventory(out / "objects.inv")
  missing = sorted(public() - set(entries))
  assert not missing, f"not in the built reference: {missing}"
  ext = extension()
  for module, names in ext.families().items():
    page = ext.FAMILIES[module][0]
    for name in names:
      assert entries[f"jaxloss.{name}"].startswith(f"api/{page}.html#"), name
  for name in jaxloss.nn.__all__:
    assert entries[f"jaxloss.nn.{name}"].startswith("api/nn.html#")
  for page in ("porting", "differences", "performance"):
    assert (out / "guide" / f"{page}.html").is_file()
