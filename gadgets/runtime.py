"""Chain execution: each gadget in its own thread, stages joined by bounded queues.

The :class:`Connection` a gadget sees mimics gadgetron-python's
``gadgetron.external.Connection`` (``header``, ``config``, iteration,
``send``, ``filter``, ``iter_with_mids``), so the same gadget function runs
under unisono's runtime and under a real Gadgetron ``<external>`` node.

Failure handling: the first exception raised by any gadget (or by the input
iterator) is recorded with the gadget's name and sets a shared abort flag;
every blocked ``get``/``put`` polls that flag, so all threads wind down and
the caller gets one :class:`ChainError` instead of a hang.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import ismrmrd
import torch

from gadgets.buffers import ImageBuffer, KSpaceBuffer
from gadgets.chain import Chain, load_chain
from recon.device import resolve_device

__all__ = ["Connection", "ChainError", "RunningChain", "run_chain", "message_id", "unisono_version"]

log = logging.getLogger(__name__)

_POLL_S = 0.05  # how often a blocked queue operation re-checks the abort flag


class _End:
    """Sentinel closing a stage's input."""


_END = _End()

#: item types a Connection collects before passing them on (the high-rate per-readout traffic)
_BATCHED = (ismrmrd.Acquisition, ismrmrd.Waveform)


class _Aborted(Exception):
    """Raised inside a stage when another stage failed."""


class ChainError(RuntimeError):
    """A gadget of a chain failed.

    Attributes:
        gadget: the failing gadget's instance name (``<input>`` for the source iterator).
    """

    def __init__(self, gadget: str, cause: BaseException):
        super().__init__(f"gadget '{gadget}' failed: {type(cause).__name__}: {cause}")
        self.gadget = gadget
        self.__cause__ = cause


def unisono_version() -> str:
    """Installed unisono version (recorded in image meta)."""
    try:
        return version("unisono")
    except PackageNotFoundError:
        return "0.0.0+source"


def message_id(item: Any) -> int:
    """MRD v1 message id of an item (Gadgetron's ids for the internal buffer types)."""
    if isinstance(item, ismrmrd.Acquisition):
        return 1008
    if isinstance(item, ismrmrd.Image):
        return 1022
    if isinstance(item, ismrmrd.Waveform):
        return 1026
    if isinstance(item, str):
        return 5
    if isinstance(item, KSpaceBuffer):
        return 1023  # Gadgetron's ReconData: accumulated k-space
    if isinstance(item, ImageBuffer):
        return 1024  # Gadgetron's ImageArray
    return 0


class _Pipe:
    """A bounded FIFO between two stages whose blocking operations give up when the chain aborts.

    Items move in batches: a producer hands over a list with :meth:`put_many` and the
    consumer takes everything waiting with :meth:`get_many`, so a 64 kB readout costs one
    list append rather than a lock hand-off and a thread wake-up (which, under the GIL,
    cost more than the readout's own processing at hundreds of MB/s).  The bound counts
    items: a batch waits until it fits and one larger than the bound goes in pieces, so at
    most ``maxsize`` items are ever queued.
    """

    def __init__(self, maxsize: int, abort: threading.Event):
        self._items: deque[Any] = deque()
        self._maxsize = max(1, int(maxsize))
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._abort = abort

    def put(self, item: Any) -> None:
        """Append one item (blocks while the pipe is full)."""
        self.put_many((item,))

    @property
    def maxsize(self) -> int:
        """The bound (items)."""
        return self._maxsize

    def put_many(self, items: Sequence[Any]) -> None:
        """Append ``items`` in order, waking the consumer once per piece (blocks until they fit)."""
        if len(items) > self._maxsize:
            for i in range(0, len(items), self._maxsize):
                self.put_many(items[i : i + self._maxsize])
            return
        if not items:
            return
        with self._not_full:
            while True:
                if self._abort.is_set():
                    raise _Aborted
                if len(self._items) + len(items) <= self._maxsize:
                    break
                self._not_full.wait(_POLL_S)
            self._items.extend(items)
            self._not_empty.notify()

    def get_many(self, max_items: int, block: bool = True) -> list[Any]:
        """Up to ``max_items`` waiting items, oldest first; waits for the first one if ``block``."""
        with self._not_empty:
            while not self._items:
                if not block:
                    return []
                if self._abort.is_set():
                    raise _Aborted
                self._not_empty.wait(_POLL_S)
            items = self._items
            if len(items) <= max_items:
                out = list(items)
                items.clear()
            else:
                out = [items.popleft() for _ in range(max_items)]
            self._not_full.notify()
            return out

    def waiting(self) -> int:
        """How many items are queued (a snapshot)."""
        return len(self._items)


class Connection:
    """What a gadget iterates over and sends to (gadgetron-python compatible subset).

    Attributes:
        header: the parsed ``ismrmrd.xsd.ismrmrdHeader`` of the stream.
        config: this gadget's parameters (dict) from the chain file.
        device: the torch device the chain reconstructs on.
        chain: the running :class:`~gadgets.chain.Chain`.
        name: the gadget's instance name.

    Batching (invisible to gadgets): input is taken from the queue in batches of what is
    waiting (at most :data:`BATCH`) and handed out one item at a time; sent acquisitions and
    waveforms (the per-readout traffic) are collected and passed on together when the gadget
    comes back for input, when :data:`BATCH` have accumulated, or when it sends anything
    else.  Every other item (k-space buffers, images, text) leaves at once, so a slice's
    image is never held back.
    """

    #: most items taken from the input queue, or sent downstream, in one hand-off
    BATCH = 32

    def __init__(
        self,
        header: Any,
        config: dict[str, Any],
        inbox: _Pipe,
        outbox: _Pipe,
        device: torch.device,
        chain: Chain | None = None,
        name: str = "",
    ):
        self.header = header
        self.config = config
        self.device = device
        self.chain = chain
        self.name = name
        self._inbox = inbox
        self._outbox = outbox
        self._in: deque[Any] = deque()  # taken from the inbox, not yet handed to the gadget
        self._out: list[Any] = []  # readouts sent by the gadget, not yet passed on
        # hand-offs no larger than the queues: a stage holds at most one queue's worth in hand
        self._take_max = min(self.BATCH, inbox.maxsize)
        self._send_max = min(self.BATCH, outbox.maxsize)
        self.filters: list[Callable[[Any], bool]] = []
        self._closed = False

    def filter(self, predicate: type | Callable[[Any], bool]) -> None:
        """Only items satisfying ``predicate`` (or instances of a type) reach the gadget; others pass on."""
        if isinstance(predicate, type):
            cls = predicate
            self.filters.append(lambda o: isinstance(o, cls))
        else:
            self.filters.append(predicate)

    def send(self, item: Any) -> None:
        """Pass an item to the next stage (blocks while its queue is full)."""
        out = self._out
        out.append(item)
        if len(out) >= self._send_max or not isinstance(item, _BATCHED):
            self.flush()

    def flush(self) -> None:
        """Pass on what :meth:`send` has collected (called by the runtime; gadgets need not)."""
        if self._out:
            out, self._out = self._out, []
            self._outbox.put_many(out)

    def _take(self, block: bool) -> bool:
        """Refill the local input from the inbox; False when nothing is waiting (``block`` False)."""
        if block:
            self.flush()  # about to wait: what was sent must not wait with us
        got = self._inbox.get_many(self._take_max, block)
        self._in.extend(got)
        return bool(got)

    def next(self) -> tuple[int, Any]:
        """The next (message id, item) that passes the filters; StopIteration at the end."""
        while True:
            if self._closed:
                self.flush()
                raise StopIteration
            if not self._in:
                self._take(block=True)
            item = self._in.popleft()
            if item is _END:
                self._closed = True
                self.flush()
                raise StopIteration
            if all(p(item) for p in self.filters):
                return message_id(item), item
            self.send(item)

    def __next__(self) -> tuple[int, Any]:
        return self.next()

    def ready(self, max_items: int) -> list[Any]:
        """Up to ``max_items`` more items that are already waiting, without blocking.

        Lets a gadget batch work when data arrive faster than it processes them (one
        batched FFT instead of many small ones) while a slow stream still goes item by
        item, so latency does not grow. Items failing the filters pass on, as in ``next``.
        Not part of gadgetron-python's Connection: gadgets must work without it.
        """
        out: list[Any] = []
        while len(out) < max_items and not self._closed:
            if not self._in and not self._take(block=False):
                break
            item = self._in.popleft()
            if item is _END:
                self._closed = True
                break
            if all(p(item) for p in self.filters):
                out.append(item)
            else:
                self.send(item)
        return out

    def iter_with_mids(self) -> Iterator[tuple[int, Any]]:
        """Iterate (message id, item) pairs."""
        while True:
            try:
                yield self.next()
            except StopIteration:
                return

    def __iter__(self) -> Iterator[Any]:
        for _, item in self.iter_with_mids():
            yield item

    def _drain(self) -> int:
        """Discard what is left of the input after the gadget returned; the count discarded."""
        self.flush()
        n = 0
        while not self._closed:
            if not self._in:
                self._take(block=True)
            item = self._in.popleft()
            if item is _END:
                self._closed = True
            else:
                n += 1
        return n


class RunningChain:
    """A chain whose stages run in threads; feed it with :meth:`put`, read it by iterating.

    Example::

        rc = RunningChain(load_chain("cartesian"), header, device="cpu")
        feeder = threading.Thread(target=rc.feed, args=(acquisitions,)); feeder.start()
        images = [item for item in rc if isinstance(item, ismrmrd.Image)]

    Every ``ismrmrd.Image`` leaving the chain is stamped with the meta
    ``unisono.chain``, ``unisono.version`` and ``unisono.chain_sha256``.
    """

    def __init__(self, chain: Chain | str, header: Any, device: str | torch.device = "cpu"):
        self.chain = load_chain(chain)
        self.header = header
        self.device = resolve_device(device)
        self.sha256 = self.chain.sha256
        self._version = unisono_version()
        self._abort = threading.Event()
        self._error: ChainError | None = None
        self._lock = threading.Lock()
        n = len(self.chain.gadgets)
        self._pipes = [_Pipe(self.chain.queue_size, self._abort) for _ in range(n + 1)]
        self._threads: list[threading.Thread] = []
        for i, spec in enumerate(self.chain.gadgets):
            fn = spec.load()
            params = spec.resolved_params()
            conn = Connection(
                header, dict(params), self._pipes[i], self._pipes[i + 1], self.device, self.chain, spec.name
            )
            t = threading.Thread(
                target=self._run_stage,
                args=(spec.name, fn, conn, params),
                name=f"gadget-{spec.name}",
                daemon=True,
            )
            self._threads.append(t)
        for t in self._threads:
            t.start()

    # -- failure bookkeeping -------------------------------------------------------------------
    def _fail(self, name: str, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = ChainError(name, exc)
                log.error("chain '%s': %s", self.chain.name, self._error)
        self._abort.set()

    @property
    def error(self) -> ChainError | None:
        """The first failure, if any."""
        return self._error

    def _run_stage(self, name: str, fn: Callable[..., Any], conn: Connection, params: dict[str, Any]) -> None:
        try:
            with torch.inference_mode():
                fn(conn, **params)
            dropped = conn._drain()
            if dropped:
                log.warning("gadget '%s' returned early; %d input item(s) were discarded", name, dropped)
            conn.flush()
            conn._outbox.put(_END)
        except _Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001 - any failure must reach the caller
            self._fail(name, exc)

    # -- input side ----------------------------------------------------------------------------
    def put(self, item: Any) -> None:
        """Feed one item to the first stage; raises :class:`ChainError` once the chain failed."""
        try:
            self._pipes[0].put(item)
        except _Aborted:
            raise self._error or ChainError("<input>", RuntimeError("chain aborted")) from None

    @property
    def batch_size(self) -> int:
        """The most items worth handing to :meth:`put_many` at once (bounded by the queue size)."""
        return min(Connection.BATCH, self._pipes[0].maxsize)

    def put_many(self, items: Sequence[Any]) -> None:
        """Feed several items at once (one hand-off: how the server passes a received batch on)."""
        try:
            self._pipes[0].put_many(items)
        except _Aborted:
            raise self._error or ChainError("<input>", RuntimeError("chain aborted")) from None

    def close(self) -> None:
        """Signal the end of the input stream."""
        self.put(_END)

    def feed(self, items: Iterable[Any]) -> None:
        """Put every item and close; an exception from ``items`` itself aborts the chain as ``<input>``.

        A list or tuple (offline replay) is fed in batches; any other iterable (a live
        source) item by item, as each arrives.
        """
        try:
            if isinstance(items, list | tuple):
                step = self.batch_size
                for i in range(0, len(items), step):
                    self.put_many(items[i : i + step])
            else:
                for item in items:
                    self.put(item)
            self.close()
        except ChainError:
            pass
        except BaseException as exc:  # noqa: BLE001
            self._fail("<input>", exc)

    def abort(self, reason: str = "aborted by caller") -> None:
        """Stop every stage (used when the client disappears)."""
        self._fail("<caller>", RuntimeError(reason))

    # -- output side ---------------------------------------------------------------------------
    def _stamp(self, item: Any) -> Any:
        if isinstance(item, ismrmrd.Image):
            item.meta["unisono.chain"] = self.chain.name
            item.meta["unisono.version"] = self._version
            item.meta["unisono.chain_sha256"] = self.sha256
        return item

    def __iter__(self) -> Iterator[Any]:
        """Items leaving the last stage; raises :class:`ChainError` if any stage failed."""
        for batch in self.batches():
            yield from batch

    def queued(self) -> int:
        """Items waiting in the queues between the stages and at the output (a snapshot)."""
        return sum(p.waiting() for p in self._pipes)

    def output_waiting(self) -> bool:
        """True when items have left the last stage and not been read yet."""
        return self._pipes[-1].waiting() > 0

    def batches(self) -> Iterator[list[Any]]:
        """Items leaving the last stage, as lists of what was waiting together (never empty).

        Raises:
            ChainError: if any stage failed.
        """
        out = self._pipes[-1]
        done = False
        while not done:
            try:
                batch = out.get_many(Connection.BATCH)
            except _Aborted:
                raise self._error or ChainError("<chain>", RuntimeError("aborted")) from None
            if batch[-1] is _END:
                batch.pop()
                done = True
            if batch:
                yield [self._stamp(item) for item in batch]
        for t in self._threads:
            t.join()
        if self._error is not None:
            raise self._error

    def join(self, timeout: float | None = None) -> None:
        """Wait for every stage thread."""
        for t in self._threads:
            t.join(timeout)


def run_chain(
    chain: Chain | str,
    header: Any,
    acquisitions: Iterable[Any],
    device: str | torch.device = "cpu",
    images_only: bool = True,
) -> list[Any]:
    """Offline replay: stream ``acquisitions`` through ``chain`` without a socket.

    Args:
        chain: a :class:`Chain`, a shipped chain name or a chain file path.
        header: the ``ismrmrd.xsd.ismrmrdHeader`` of the data.
        acquisitions: ``ismrmrd.Acquisition`` (and waveform) items in scan order.
        device: ``auto``, ``cpu`` or ``cuda``.
        images_only: return only ``ismrmrd.Image`` outputs (default), else everything.

    Returns:
        The chain's outputs in the order they left it.

    Raises:
        ChainError: naming the gadget that failed.
    """
    rc = RunningChain(chain, header, device)
    feeder = threading.Thread(target=rc.feed, args=(acquisitions,), name="chain-feeder", daemon=True)
    feeder.start()
    try:
        out = [item for item in rc if not images_only or isinstance(item, ismrmrd.Image)]
    finally:
        feeder.join()
    return out
