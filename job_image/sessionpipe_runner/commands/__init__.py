"""The ``sessionpipe`` commands, one module each.

Each module has ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``handle(args) -> exit code``;
:mod:`sessionpipe_runner.cli` assembles them into one parser. What they share (reading the
database, loading a processor, the parser classes) is in :mod:`.common`.
"""
