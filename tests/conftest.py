"""Fixtures shared by every test: the real control plane (``tests.kube_plugin``), started on demand."""

pytest_plugins = ["tests.kube_plugin"]
