"""The store: everything kept in Redis — the run document with the rule of each of its
changes (``run``; its fields in ``run_parts``), the run store applying them atomically
(``runs``) with the indexes it keeps in the same transactions (``run_indexes``), the
stages' names and order (``stage_names``), the model registry (``registry``), atomic
JSON updates (``redis_json``), arq plumbing (job ids, queuing, serialization: ``queue``),
workers' leases and heartbeat (``leases``, ``health``), shadow agreement tallies
(``shadow``), retention (``retention``: the caller says which files a backend keeps for a
job) and the embedded redis-server (``embedded_redis``).

May import only the settings and the shared value types (``values``): the store knows no
backend, no build code and no stage.
"""
