"""Parity tests: the ``usage`` processor against ccusage 20.0.24 run from npm on the corpus."""
