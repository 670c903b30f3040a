"""``/ui``, the dashboard: its routes (``routes``), what every page shares (``pages``: the
templates, headers, forms), the session (``session``: sign-in, cookie, CSRF), the run page
(``run``), models and the schedule (``models``), the review queue (``review``); Jinja2
templates in ``templates/``, CSS and JS in ``static/``.
"""
