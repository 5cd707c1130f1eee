"""pytest fixtures of the chart suite; the helpers live in chartlib.py (a unique module
name, so this suite can share a pytest session with tests/e2e)."""

from chartlib import variant, variant_docs  # noqa: F401  (fixtures)
