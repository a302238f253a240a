"""The part of ``SwapService`` that agrees with the workers: re-reading, recovery, reset.

A mixin: ``ensure_synced`` adopts a worker's own report when the store's
view of it may be stale (holding the slot: it waits for another swap, and
for generations only on the models the report takes away; hits on every
other resident model go on), ``_recovered`` re-reads a worker that answers
again after it was down (on its own thread, never the health probes'; its
disk cache is reused as it is, nothing pushed), and ``reset`` evicts
everything from every worker (holding each exclusively: it touches every
model).
"""

from __future__ import annotations

import threading

from model_store_server.core.fleet import WorkerNode
from model_store_server.core.gate import Busy, busy
from model_store_server.core.worker_view import WorkerView
from model_swap.errors import ApiError


class Syncing:
    """Re-reading and resetting workers (see the module docstring); needs ``fleet`` and
    ``deadline()`` from ``SwapService``."""

    def ensure_synced(
        self,
        deadline: float | None = None,
        *,
        node: WorkerNode,
        model: str | None = None,
        version: str | None = None,
    ) -> None:
        """Adopt the worker's own report if the store's view of it may be stale.

        Waits (until ``deadline``, a monotonic time) for the slot, then only
        for generations on the models the report takes away. With ``model``
        (a request's, at ``version``) it returns without re-reading as soon
        as that model can be served as a hit: a swap running elsewhere never
        holds up a resident model. ``node``: which worker.
        """
        view = node.view
        if view.synced:
            return
        deadline = deadline or self.deadline()
        try:
            slot = view.sync_slot(deadline, model, version)
        except Busy as err:
            raise busy(err) from None
        if slot is None:  # synced meanwhile, or the request's model is a hit
            return
        error = node.executor.reread(view, slot, deadline)
        if error is not None:
            node.last_error = error.message
            raise error

    def _exclusive(self, view: WorkerView, deadline: float | None = None):
        try:
            return view.exclusive(deadline or self.deadline())
        except Busy as err:
            raise busy(err) from None

    def _recovered(self, node: WorkerNode) -> None:
        """A worker answers again: re-read it now (its disk cache is reused as it is), on a
        thread of its own, so the health probes and discovery never wait for it."""

        if not node.rereading.acquire(blocking=False):
            return  # one re-read at a time (a lone worker's probes ask again while stale)

        def reread() -> None:
            try:
                self.ensure_synced(node=node)
            except ApiError as err:
                self.fleet.mark_down(node, err)
            finally:
                node.rereading.release()

        threading.Thread(target=reread, name=f"store-reread-{node.id}", daemon=True).start()

    def reset(self) -> list[str]:
        """Evict every model every worker holds, through their executors."""
        evicted: list[str] = []
        for node in self.fleet.nodes:
            evicted += self._reset(node)
        return evicted

    def _reset(self, node: WorkerNode) -> list[str]:
        self.ensure_synced(node=node)
        with self._exclusive(node.view) as exclusive:
            try:
                names = list(node.view.cached_names())
                evicted = node.executor.evict_all(exclusive, names)
            finally:
                error = node.executor.resync(node.view)
                exclusive.end(synced=error is None)
        if error is not None:
            raise error
        return evicted
