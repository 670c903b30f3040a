"""Triggers: what starts runs and what the outside world calls — the webhook and runs API
(``api``, with request signing and tokens in ``auth``, refusals as JSON in ``errors``),
the moderation service's endpoints (``moderation_api``, answered by ``serving``), the
retrain schedule (``schedule``, a cron job the worker process hosts) and monitoring
(``/healthz``, ``/metrics``).

May import the producer, serving, stages and every wing below them; nothing imports a
trigger but the CLI.
"""
