"""Loading ahead of the net (Caffe's ``BasePrefetchingDataLayer`` and its ``prefetch`` count).

    queue = BatchQueue(load_batch, depth=4, name='layer "data" (Data)')
    batch = queue.get()     # the next batch, in order; a loading error is raised here
    queue.close()           # stops the thread (also done when the queue is garbage collected)

With ``depth > 0`` one background thread calls ``load_batch()`` over and over, at most ``depth``
batches ahead of the consumer (Caffe's ``prefetch`` batches cycling through its free and full
queues), so the net only waits when the loader is slower than the net. With ``depth == 0`` every
``get()`` loads its batch in the calling thread. Either way batches come out in the order they
were loaded, and ``load_batch`` is only ever called from one thread at a time, so a loader that
owns its random generator gives the same batches with or without prefetching. ``waits`` and
``wait_seconds`` count the calls that found no batch ready (the net waited for data).

The thread starts on the first ``get()`` (a net that is built but never run starts none). It is
a daemon thread and never blocks for more than a fraction of a second without checking whether
it must stop, so closing the queue (or leaving the interpreter) cannot hang. An exception in
``load_batch`` ends the thread and is raised by the next ``get()`` (and every one after it), in
the caller's thread: ``on_error(exception)`` turns it into the error to raise (a data layer puts
its name in front); errors that are not :class:`~torchcaffe.errors.CaffeError` are described
with their type, never swallowed.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from typing import Callable, Generic, TypeVar

from ..errors import CaffeError
from .errors import DataError

log = logging.getLogger("torchcaffe")
T = TypeVar("T")
_POLL_S = 0.05  # how long a blocked put/get waits before checking whether to stop


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class BatchQueue(Generic[T]):
    """Batches from ``load_batch``, loaded ``depth`` ahead in a background thread."""

    def __init__(self, load_batch: Callable[[], T], depth: int, name: str,
                 on_error: Callable[[BaseException], BaseException] | None = None):
        if depth < 0:
            raise DataError(f"{name}: prefetch must be >= 0, got {depth}")
        self.depth = int(depth)
        self.name = name
        self._load = load_batch
        self._on_error = on_error or _describe_error(name)
        self._queue: queue.Queue | None = None
        self._slots = threading.Semaphore(self.depth)  # batches that may be loaded ahead
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self.waits = 0  # how often get() found no batch ready and had to wait
        self.wait_seconds = 0.0

    @property
    def running(self) -> bool:
        """Whether the prefetch thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def get(self) -> T:
        """The next batch. Raises the loader's error (converted by ``on_error``)."""
        if self._failure is not None:
            raise self._failure
        if self.depth == 0:
            return self._load_now()
        if self._thread is None:
            self._start()
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            item = self._wait()
        if isinstance(item, _Failure):
            self._failure = self._convert(item.error)
            raise self._failure
        self._slots.release()
        return item

    def _wait(self):
        """The next item when none is ready: the net waits for data (Caffe logs "Data layer
        prefetch queue empty" every 1000 such waits); counted in ``waits``/``wait_seconds``."""
        if self.waits % 1000 == 0:
            log.info("%s: Data layer prefetch queue empty", self.name)
        self.waits += 1
        start = time.perf_counter()
        try:
            while True:
                try:
                    return self._queue.get(timeout=_POLL_S)
                except queue.Empty:
                    if not self._thread.is_alive() and self._queue.empty():  # only after close()
                        raise DataError(f"{self.name}: the prefetch thread has been stopped (the "
                                        f"layer was closed)") from None
        finally:
            self.wait_seconds += time.perf_counter() - start

    def close(self) -> None:
        """Stop the prefetch thread and drop the batches it had loaded."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            while thread.is_alive():
                self._drain()
                thread.join(timeout=_POLL_S)
            self._drain()

    # -- internals ----------------------------------------------------------------------------
    def _load_now(self) -> T:
        try:
            return self._load()
        except Exception as err:
            self._failure = self._convert(err)
        raise self._failure  # outside the except block: the cause is set, the context is noise

    def _convert(self, error: BaseException) -> BaseException:
        converted = self._on_error(error)
        if converted is not error and converted.__cause__ is None:
            converted.__cause__ = error
        return converted

    def _start(self) -> None:
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=_produce, name=f"prefetch {self.name}", daemon=True,
                                        args=(self._load, self._queue, self._slots, self._stop))
        # the thread must not keep the queue object alive, or the finalizer below never runs
        weakref.finalize(self, _stop_thread, self._stop)
        self._thread.start()

    def _drain(self) -> None:
        if self._queue is None:
            return
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass


def _produce(load_batch, batches: queue.Queue, slots: threading.Semaphore, stop: threading.Event) -> None:
    """The prefetch thread: wait for a free slot, load, hand over; stop when asked or on an error."""
    while not stop.is_set():
        if not slots.acquire(timeout=_POLL_S):
            continue
        try:
            batches.put(load_batch())
        except BaseException as err:  # handed to the consumer, raised there
            batches.put(_Failure(err))
            return


def _stop_thread(stop: threading.Event) -> None:
    stop.set()


def _describe_error(name: str) -> Callable[[BaseException], BaseException]:
    def describe(error: BaseException) -> BaseException:
        if isinstance(error, CaffeError):
            return error
        return DataError(f"{name}: loading a batch failed: {type(error).__name__}: {error}")
    return describe
