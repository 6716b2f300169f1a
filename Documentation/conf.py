# SPDX-License-Identifier: GPL-2.0
#
# Sphinx configuration for kmcl's documentation: `make docs` builds it with
# warnings treated as errors.

project = "kmcl"
master_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
