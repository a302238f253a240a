"""The store's core: one worker's view and gate, the scheduler, the executor, the orchestrator.

Layers call down: ``orchestrator`` -> ``worker_view`` (with its ``gate`` and
``scheduler``, pure bookkeeping under one lock) -> ``executor`` (effects on the
worker) -> transport. ``events`` carries what happened to its subscribers.
"""
