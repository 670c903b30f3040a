"""Triggers: what starts runs and what the outside world calls — the webhook and runs API
(``api``, with request signing in ``auth``), the retrain schedule (``schedule``, a cron job
the worker process hosts) and monitoring (``/healthz``, ``/metrics``).

May import the producer, stages and every wing below them; nothing imports a trigger but
the CLI.
"""
