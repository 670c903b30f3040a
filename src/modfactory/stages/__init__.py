"""The pipeline's stages, in the cookbook's order: build → upload → train → evaluate.

Each stage is an arq job: it reads its run, does one step and records what it produced in
the run store; the stage wrapper (``context.stage``) then queues the next stage (the order
is ``store.run.STAGES``). Re-running a finished stage changes nothing but queuing the next.
The reconciler (``reconciler``) re-queues lost steps and prunes once a day.

May import the backends, store, data and evaluation wings and the bottom; never the
producer, the worker or a trigger.
"""
