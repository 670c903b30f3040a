"""The pipeline's stages, in the cookbook's order: build → upload → train → evaluate.

Each stage is an arq job: it reads its run, does one step and records what it produced in
the run store; the stage wrapper (``context.stage``) then queues the next stage (the order
is ``runs.STAGES``). Re-running a finished stage changes nothing but queuing the next.
"""
