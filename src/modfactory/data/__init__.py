"""Data: turning a source into the training set — the cookbook's recipe (``recipe``),
sources (``sources``: ``hf:``, directories, synthetic), synthetic rows in the
``google/civil_comments`` schema (``synthetic``), the two build engines (``build``,
``fast_build``) and the shuffle replay with its guard (``shuffle_indices``,
``shuffle_guard``).

May import only the bottom (settings, values, fileio, logs, charts).
"""
