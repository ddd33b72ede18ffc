"""Background prefetch, so the service and image decoding stay off the training step's critical path (budget P5).

Rank 0 leases manifests ahead in a thread (:class:`ManifestFeed`); :class:`Prefetcher` hands each manifest to every
rank and starts loading that rank's share of its images in the background, ``depth`` manifests ahead.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .client import ServiceClient, ServiceError
from .distributed import World, broadcast_object

DONE: dict[str, Any] = {"done": True}


class ManifestFeed:
    """Leases the run's next manifests into a bounded queue; waits (as told by the service) while none is free.

    At the end of an epoch nothing is free while this trainer's own last manifests are still in flight, and the
    service's ``wait_seconds`` is the time to their lease expiry: :meth:`nudge` (called when the trainer finishes
    a manifest) ends the pause at once, so the next epoch starts without waiting out ``max_wait``.
    """

    def __init__(
        self,
        client: ServiceClient,
        run_id: int,
        declare: Callable[[], tuple[str | None, int | None]],
        size: int | None = None,
        depth: int = 1,
        max_wait: float = 5.0,
    ) -> None:
        self.client, self.run_id, self.declare, self.size, self.max_wait = client, run_id, declare, size, max_wait
        self.queue: queue.Queue[dict[str, Any] | BaseException] = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="manifest-feed", daemon=True)
        self.thread.start()

    def _put(self, item: dict[str, Any] | BaseException) -> None:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                self.wake.clear()  # before asking: a manifest finished while the request is in flight still wakes
                model_id, checkpoint_step = self.declare()
                manifest = self.client.next_manifest(self.run_id, self.size, model_id, checkpoint_step)
                if manifest["items"]:
                    self._put(manifest)
                elif manifest["phase"] == "done":
                    self._put(DONE)
                    return
                else:  # other trainers hold the rest of the epoch, or the prototypes are being initialised
                    pause = min(self.max_wait, float(manifest.get("wait_seconds") or 1.0))
                    self.wake.wait(pause)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread, which raises it
            self._put(exc)

    def get(self, block: bool) -> dict[str, Any] | None:
        try:
            item = self.queue.get(block=block)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def nudge(self) -> None:
        """The trainer finished a manifest (posted or acknowledged): rows may have come free; ask again now."""
        self.wake.set()

    def close(self) -> None:
        self.stopped.set()
        self.wake.set()
        self.thread.join(timeout=5)


def shard(items: Sequence[Any], world: World) -> list[Any]:
    """This rank's items of a manifest: every ``world.size``-th, starting at the rank."""
    return list(items[world.rank :: world.size])


class Prefetcher:
    """``next()`` → ``(manifest, loaded)`` with this rank's items already loaded, or ``None`` once the run is done."""

    def __init__(
        self, feed: ManifestFeed | None, world: World, load: Callable[[list[Any]], Any], depth: int = 2
    ) -> None:
        if world.is_main and feed is None:
            raise ValueError("rank 0 needs a manifest feed")
        self.feed, self.world, self.load, self.depth = feed, world, load, max(1, depth)
        self.pending: deque[tuple[dict[str, Any], Future[Any]]] = deque()
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.done = False

    def _top_up(self, block: bool) -> None:
        # collective on every rank in the same order: rank 0 decides, the others follow its broadcast
        while len(self.pending) < self.depth and not self.done:
            manifest = self.feed.get(block=block and not self.pending) if self.feed is not None else None
            manifest = broadcast_object(manifest)
            if manifest is None:
                return
            if manifest.get("done"):
                self.done = True
                return
            self.pending.append((manifest, self.loader.submit(self.load, shard(manifest["items"], self.world))))

    def next(self) -> tuple[dict[str, Any], Any] | None:
        self._top_up(block=True)
        if not self.pending:
            return None
        manifest, future = self.pending.popleft()
        self._top_up(block=False)
        return manifest, future.result()

    def close(self) -> None:
        self.loader.shutdown(wait=False, cancel_futures=True)
        if self.feed is not None:
            self.feed.close()


class BackgroundAcks:
    """Subset-phase acknowledgements sent off the training thread, in order, one at a time (budget P5: an ack is a
    round trip the next step need not wait for). ``on_done`` runs after each, so a feed waiting at an epoch's end
    asks again at once. Errors other than a lost lease surface on the training thread at the next ``collect``."""

    def __init__(self, client: ServiceClient, run_id: int, on_done: Callable[[], None]) -> None:
        self.client, self.run_id, self.on_done = client, run_id, on_done
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ack")
        self.pending: deque[Future[bool]] = deque()
        self.lost = 0

    def _ack(self, manifest_id: str) -> bool:
        try:
            self.client.ack(self.run_id, manifest_id)
            return True
        except ServiceError as exc:
            if exc.code != "lease_expired":
                raise
            return False  # the lease lapsed and its rows went to another trainer
        finally:
            self.on_done()

    def submit(self, manifest_id: str) -> None:
        self.pending.append(self.pool.submit(self._ack, manifest_id))
        self.collect(block=False)

    def collect(self, block: bool) -> None:
        """Take in finished acknowledgements (all of them with ``block``), raising the first error."""
        while self.pending and (block or self.pending[0].done()):
            if not self.pending.popleft().result():
                self.lost += 1

    def shutdown(self) -> None:
        """Stop the sender after the acknowledgement in flight; ``collect`` first to know they all landed."""
        self.pool.shutdown(wait=True)
