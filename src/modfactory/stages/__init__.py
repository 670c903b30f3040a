"""The pipeline's stages, in the cookbook's order: build → upload → train → evaluate.

Each stage is an arq job: it reads its run, does one step, records what it produced in the
run store and enqueues the next stage. Re-running a finished stage changes nothing.
"""
