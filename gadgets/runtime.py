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
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
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
    """A bounded queue whose blocking operations give up when the chain aborts."""

    def __init__(self, maxsize: int, abort: threading.Event):
        self._q: queue.Queue[Any] = queue.Queue(maxsize)
        self._abort = abort

    def put(self, item: Any) -> None:
        while True:
            if self._abort.is_set():
                raise _Aborted
            try:
                self._q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def get_nowait(self) -> Any:
        """The next item if one is waiting, else raise ``queue.Empty``."""
        return self._q.get_nowait()

    def get(self) -> Any:
        while True:
            try:
                return self._q.get(timeout=_POLL_S)
            except queue.Empty:
                if self._abort.is_set():
                    raise _Aborted from None


class Connection:
    """What a gadget iterates over and sends to (gadgetron-python compatible subset).

    Attributes:
        header: the parsed ``ismrmrd.xsd.ismrmrdHeader`` of the stream.
        config: this gadget's parameters (dict) from the chain file.
        device: the torch device the chain reconstructs on.
        chain: the running :class:`~gadgets.chain.Chain`.
        name: the gadget's instance name.
    """

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
        self._outbox.put(item)

    def next(self) -> tuple[int, Any]:
        """The next (message id, item) that passes the filters; StopIteration at the end."""
        while True:
            if self._closed:
                raise StopIteration
            item = self._inbox.get()
            if item is _END:
                self._closed = True
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
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
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
        n = 0
        while not self._closed:
            item = self._inbox.get()
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

    def close(self) -> None:
        """Signal the end of the input stream."""
        self.put(_END)

    def feed(self, items: Iterable[Any]) -> None:
        """Put every item and close; an exception from ``items`` itself aborts the chain as ``<input>``."""
        try:
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
        out = self._pipes[-1]
        while True:
            try:
                item = out.get()
            except _Aborted:
                raise self._error or ChainError("<chain>", RuntimeError("aborted")) from None
            if item is _END:
                break
            yield self._stamp(item)
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
