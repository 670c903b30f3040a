"""The pipeline's stages, in the cookbook's order: build → upload → train → evaluate.

``pipeline`` shows the whole run and makes each stage an arq job; each stage's module
(``build``, ``upload``, ``train``, ``evaluate``) does its one step and records what it
produced in the run store; ``policy`` decides what a failed attempt makes of a stage;
``context`` is what every job is given; the reconciler (``reconciler``) re-queues lost
steps and prunes once a day.

May import the backends, store, data and evaluation wings and the bottom; never the
producer, the worker or a trigger.
"""
