"""``sessionpipe serve``: a read-only web dashboard, JSON API and Prometheus metrics over the
newest published snapshot of the database.

The app (:mod:`.app`) reads only the snapshot (:mod:`.snapshots`), never the file a run writes, so a
run is never blocked; its JSON equals the CLI's (the API parses its query with the reports' own
flags, :mod:`.params`); charts are SVG drawn on the server (:mod:`.charts`), so the pages need no
script and no network.
"""
