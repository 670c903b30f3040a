"""The store: everything kept in Redis — the run document with the rule of each of its
changes (``run``; its fields in ``run_parts``), the run store applying them atomically
(``runs``) with the indexes it keeps in the same transactions (``run_indexes``), the
stages' names and order (``stage_names``), the model registry (``registry``), arq
plumbing (job ids, queuing, serialization: ``queue``), workers' leases and heartbeat
(``leases``, ``health``), shadow agreement tallies (``shadow``), retention (``retention``:
a run's document and artifacts, and what the caller says its backend keeps for its job)
and the embedded redis-server (``embedded_redis``).

May import only the bottom (settings, value types, the artifact store, atomic JSON
documents): the store knows no backend, no build code and no stage.
"""
