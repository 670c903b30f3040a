"""Scoring an archive with a model, across the fleet, exactly once: a scoring job's arq
jobs (``pipeline``: plan, shards, finish), what one shard does (``shard``), the results
summed up and reported (``results``), and the reconciling of jobs nobody runs
(``reconciler``)."""
