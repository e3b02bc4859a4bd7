"""sessionpipe's data plane: the runner, the DuckDB store, leases, processors and the CLI."""

__version__ = "0.1.0"
