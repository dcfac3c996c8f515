"""Sphinx configuration of the skffjord documentation.

Build (warnings are errors): ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
"""

from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.abspath(".."))

import skffjord  # noqa: E402

project = "skffjord"
author = "skffjord developers"
copyright = "2026, skffjord developers"  # noqa: A001
release = version = skffjord.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
html_static_path = ["_static"]
# MathJax is vendored (docs/_static/mathjax/README.md) so that formulas render offline.
mathjax_path = "mathjax/tex-svg-full.js"
exclude_patterns = ["_build", "README.md", "_static", "auto_examples/*.ipynb", "auto_examples/*.py"]
html_theme = "pydata_sphinx_theme"
html_title = f"skffjord {release}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
# These pages have no sub-pages, so their left "section navigation" would stay empty.
_FLAT_PAGES = ("index", "install", "getting_started", "user_guide", "choosing", "outliers")
html_sidebars = {page: [] for page in (*_FLAT_PAGES, "datasets")}

autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = {"GL08"}  # every public object has a docstring
numpydoc_xref_param_type = False

# No intersphinx: the build must not need the network.

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
}

warnings.filterwarnings("ignore", category=UserWarning, message="Matplotlib is currently using agg")
