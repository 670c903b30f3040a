"""Triggers: what starts runs — the webhook's retrain (``webhook``: what a request may ask
for, the run it starts), the retrain schedule (``schedule``, a cron job the worker process
hosts) and retrains after moderators' corrections (``feedback``).

May import the producer, the stages and every wing below them; imported by the HTTP surface
(``web``) and the CLI.
"""
