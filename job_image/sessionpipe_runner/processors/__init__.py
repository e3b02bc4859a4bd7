"""Processors: the contract, the registry, and the built-in ones."""
