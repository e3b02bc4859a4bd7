"""Fixtures shared by every test: the real control plane (``tests.kube.plugin``), started on demand."""

pytest_plugins = ["tests.kube.plugin"]
