"""The HTTP surface of ``modfactory serve``: the application and its runs API (``app``),
request signing and tokens (``auth``), refusals as JSON (``errors``), bodies read with a
limit (``request_body``), the moderation service (``moderation_api``, answered by
``serving``), corrections and the review queue (``feedback_api``), monitoring (``/healthz``,
``/metrics``: ``monitoring``) and the dashboard (``ui``).

May import the triggers, the producer, serving, the stages and every wing below them;
nothing imports it but the CLI.
"""
