"""The ``sessionpipe`` commands, one module each.

Each module has ``NAME``, ``DESCRIPTION``, ``EXAMPLES``, ``add_arguments(parser)`` and
``handle(args) -> exit code``; :mod:`sessionpipe_runner.cli` lists them by name with their one-line
help (``COMMANDS``) and imports a module only when its command is used. What they share (common
flags, reading the database, loading a processor) is in :mod:`.common`; the parser classes in
:mod:`.parsers`.
"""
