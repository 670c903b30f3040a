"""Evaluation: scoring a trained model on the held-out splits — metrics and thresholds
(``metrics``, typed as ``values.SplitMetrics``), classifying texts through a backend
(``classify``), promotion rules (``promotion``), the one metrics table (``tables``) and
the run report (``report``).

May import the backends (to classify), the data wing (to read its files), the store (the
run document a report shows) and the bottom.
"""
