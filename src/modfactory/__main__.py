"""``python -m modfactory`` is the ``modfactory`` command."""

from modfactory.cli import app

app()
