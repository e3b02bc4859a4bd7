"""Integration tests: the runner and the packaging end to end, without a cluster but not fast.

Each file is marked with why it is not in the unit tier (``tests/integration/conftest.py``).
"""
