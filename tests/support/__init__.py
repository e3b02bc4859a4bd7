"""Helpers shared by test modules of more than one tier: reading a DuckDB file, applying manifests.

Waiting for a condition is :func:`sessionpipe_kubetest.waiting.wait_for` (the control plane waits
with it too).
"""
