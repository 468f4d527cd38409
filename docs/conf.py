"""Sphinx configuration of the density-db documentation.

``make docs`` builds it into ``docs/_build/html`` with every warning an error.
The pages are MyST markdown; the API reference reads the numpydoc docstrings
of the installed package and the CLI reference the click commands, so the
package must be installed (``make docs`` does it).  Nothing is fetched from
the network.
"""

from importlib.metadata import version as package_version

project = "density-db"
author = "the density-db developers"
copyright = f"2026, {author}"
release = package_version("density-db")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "numpydoc",
    "sphinx_click",
]

# numpydoc brings autosummary, which needs .rst among the sources; the pages are .md.
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Headings get GitHub's anchors, so that links such as models.md#training work
# on GitHub and in the built site alike.
myst_heading_anchors = 4

# Keep "--option" as typed in the guide and the CLI reference, not as a dash.
smartquotes = False

# autodoc: members in source order, type hints in the signatures (the numpydoc
# sections name the parameters without repeating their types).
autodoc_member_order = "bysource"
# Two modules define a PixelStatistics (pooling, maps.aggregate); a signature
# naming it may link to either, which is not worth failing the build.
suppress_warnings = ["ref.python"]
autodoc_default_options = {"members": True, "show-inheritance": True}

# numpydoc: autodoc lists the members already, no second table of them.
numpydoc_show_class_members = False

html_theme = "alabaster"
html_title = f"density-db {release}"
