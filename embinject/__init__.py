"""embinject: search for the best small adapter of a frozen language model (see README.md; layers in pyproject.toml)."""
