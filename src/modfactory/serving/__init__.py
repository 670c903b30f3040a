"""Serving: the champion of each model name answers moderation requests — loaded once
and kept warm (``champions``), scored in batches across concurrent requests
(``batching``), swapped for a new champion within a refresh interval of its promotion or
rollback by any process, the old one answering until the new one is loaded; a candidate
scored beside it in the shadow of live traffic (``shadow``); what the answers were,
counted per process (``meter``).

May import the backends (to score), the store (the registry and the champion's run, for
its labels and tuned thresholds), the evaluation wing (the plain threshold) and the
bottom; never a stage, the producer or a trigger.
"""
