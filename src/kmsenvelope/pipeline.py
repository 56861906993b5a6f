"""Running a payload through the chunk codec: in memory, or streamed by a pipeline of threads.

Streaming keeps memory constant: a few buffers of one *batch* each (several whole chunks) are
taken from a bounded pool of reused buffers, and wiped (``ctypes.memset``) before they go back.
A large stream runs as a small pipeline:

- the calling thread reads the next batch (``readinto``; a ``BytesIO`` source is read in place,
  without a copy) and keeps one batch of lookahead, to know which chunk is the last;
- up to ``workers`` threads encrypt or decrypt whole batches (``encrypt_into``/``decrypt_into``
  release the GIL, so batches really run in parallel); when reading costs CPU (a file, a pipe)
  and only two CPUs are usable, the calling thread encrypts each batch itself between reads,
  since a third busy thread on two cores would only slow the other two;
- one writer thread writes the batches in order, and only after the whole batch is done: when
  decrypting, only after every chunk in it has authenticated. Writes to a file end on 4 KiB
  boundaries.

Both directions run the same loop (:class:`PayloadLoop`); only the chunk codec differs. Inputs
of one chunk or less never start a thread. The format does not depend on any of this: the
payload is byte-for-byte the one a serial loop writes (docs/format.md, section 7).
"""

from __future__ import annotations

import ctypes
import io
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import AuthenticationError
from .format.chunks import (
    SINGLE_FINAL_NONCE,
    TAG_SIZE,
    ChunkCodec,
    open_chunks,
    payload_length,
    seal_chunks,
)

__all__ = [
    "ALIGN",
    "BATCH_BYTES",
    "BUFFERS",
    "MAX_WORKERS",
    "SLOTS",
    "PayloadLoop",
    "decrypt_bytes",
    "decrypt_payload",
    "default_workers",
    "encrypt_bytes",
    "encrypt_payload",
    "release_buffers",
    "tell_or_none",
    "wipe",
]

Progress = Callable[[int], None]

BATCH_BYTES = 1 << 20
"""Payload bytes handed to a worker at once (whole chunks; at least one chunk)."""
SLOTS = 4
"""Batches in flight (being read, encrypted or written): the memory is ``SLOTS`` x 2 batches."""
MAX_WORKERS = 4


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(reads_cost: bool = False) -> int:
    """Threads that encrypt or decrypt batches in parallel, at most 4: one per usable CPU, less
    the two that the reading (calling) thread and the writer thread keep busy when the input
    is a real stream. 0 means the calling thread does the crypto itself, between reads."""
    cpus = _usable_cpus()
    if reads_cost:
        return min(max(0, cpus - 2), MAX_WORKERS)
    return max(1, min(cpus, MAX_WORKERS))


def _read_full(src: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``src``; return the bytes read (fewer only at end of input)."""
    got = 0
    size = len(view)
    readinto = getattr(src, "readinto", None)
    while got < size:
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = src.read(size - got)
            n = len(data)
            view[got : got + n] = data
        if not n:
            break
        got += n
    return got


class _BufferPool:
    """Chunk buffers kept between streams: on these machines touching fresh memory costs about
    as much as encrypting it (0.7 ms per MiB), so a process that streams repeatedly reuses a
    few MiB instead of allocating them each time. Bounded by ``limit`` bytes; thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free: dict[int, list[bytearray]] = {}
        self._held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        with self._lock:
            free = self._free.get(size)
            if free:
                self._held -= size
                return free.pop()
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        size = len(buf)
        with self._lock:
            if self._held + size <= self.limit:
                self._free.setdefault(size, []).append(buf)
                self._held += size

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._held = 0


ALIGN = 4096
"""Writes to a file end on multiples of this (the page size): each batch's write starts with
the few bytes the previous one held back. Unaligned write boundaries cost ~10 % of the write
speed here, and ciphertext chunks (1 MiB + 16) after a header are never aligned by themselves."""

BUFFERS = _BufferPool(limit=2 * SLOTS * (BATCH_BYTES + (BATCH_BYTES >> 10) + ALIGN))


def release_buffers() -> None:
    """Drop the buffers kept for the next stream (they are reallocated when needed)."""
    BUFFERS.clear()


def wipe(buf: bytearray) -> None:
    """Overwrite ``buf`` with zeros in place (no temporary allocation)."""
    if buf:
        ctypes.memset((ctypes.c_char * len(buf)).from_buffer(buf), 0, len(buf))


class _Slot:
    """Reused buffers for one batch in flight."""

    __slots__ = ("framed", "inbuf", "inview", "outbuf", "outview", "written")

    def __init__(self, in_size: int, out_size: int, zero_copy: bool) -> None:
        # One size for both buffers of both directions (whole chunks with tags, plus ALIGN),
        # so that the pool hands an encrypting stream's buffers to a decrypting one.
        size = ALIGN + max(in_size, out_size)
        self.inbuf = None if zero_copy else BUFFERS.take(size)
        self.inview = None if self.inbuf is None else memoryview(self.inbuf)[:in_size]
        self.outbuf = BUFFERS.take(size)
        self.framed = memoryview(self.outbuf)[: ALIGN + out_size]  # ALIGN bytes of room first
        self.outview = self.framed[ALIGN:]
        self.written = 0  # plaintext bytes of this slot's last batch that reached dst

    def release(self) -> None:
        """Wipe the buffers (they held plaintext, perhaps unauthenticated) and pool them."""
        for view in (self.inview, self.outview, self.framed):
            if view is not None:
                view.release()
        self.inview = None
        for buf in (self.inbuf, self.outbuf):
            if buf is not None:
                wipe(buf)
                BUFFERS.give(buf)
        self.inbuf = None


def tell_or_none(stream: BinaryIO) -> int | None:
    """``stream``'s current offset, or None for a pipe or anything else that cannot tell."""
    try:
        if stream.seekable():
            return stream.tell()
    except (AttributeError, OSError, ValueError):
        pass
    return None


def _memory_source(src: BinaryIO) -> memoryview | None:
    """The unread contents of a ``BytesIO`` as a read-only view, without copying (``getvalue``
    returns the object's own buffer when nothing else holds a view of it)."""
    if type(src) is not io.BytesIO:
        return None
    return memoryview(src.getvalue())[src.tell() :]


class _Pipeline:
    """Read batches in order, process them on worker threads, write them in order."""

    def __init__(
        self,
        loop: PayloadLoop,
        src: BinaryIO,
        dst: BinaryIO,
        aead: AESGCM,
        chunk: int,
        progress: Progress | None,
        workers: int | None,
    ) -> None:
        self.loop, self.src, self.dst, self.aead, self.chunk = loop, src, dst, aead, chunk
        self.progress = progress
        in_block, out_block = loop.blocks(chunk)
        per_batch = max(1, BATCH_BYTES // chunk)
        self.per_batch = per_batch
        self.in_size, self.out_size = per_batch * in_block, per_batch * out_block
        self.memory = _memory_source(src)
        if workers is not None and workers < 0:
            raise ValueError("workers must be 0 (encrypt on the reading thread) or more")
        self.workers = default_workers(self.memory is None) if workers is None else workers
        self.slots: list[_Slot] = []
        self.free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self.pending: queue.SimpleQueue[tuple[Future[tuple[int, int]], _Slot] | None] = (
            queue.SimpleQueue()
        )
        self.failed = threading.Event()  # set by the writer (or on error): write no more
        self.stop = threading.Event()  # an inline batch failed: read no more
        self.errors: list[BaseException] = []
        self.position = tell_or_none(dst)  # where the next write lands, if dst can tell
        self.carry = bytearray(ALIGN)  # output held back to end writes aligned
        self.carried = 0
        self.total = 0
        self.offset = 0  # input bytes read so far

    # -- buffers ------------------------------------------------------------------------------

    def _slot(self) -> _Slot:
        """A free slot: a returned one if any, a new one while under ``SLOTS``, else wait."""
        try:
            slot = self.free.get_nowait()
        except queue.Empty:
            if len(self.slots) < SLOTS:
                slot = _Slot(self.in_size, self.out_size, self.memory is not None)
                self.slots.append(slot)
                return slot
            slot = self.free.get()
        self._report(slot)
        return slot

    def _report(self, slot: _Slot) -> None:
        if slot.written:
            self.total += slot.written
            if self.progress is not None:
                self.progress(slot.written)
            slot.written = 0

    def _read(self, slot: _Slot) -> memoryview:
        """The next batch of input: a view of the source (in place) or of the slot's buffer."""
        start = self.offset
        if self.memory is not None:
            batch = self.memory[start : start + self.in_size]
        else:
            assert slot.inview is not None
            batch = slot.inview[: _read_full(self.src, slot.inview)]
        self.offset = start + len(batch)
        return batch

    # -- the writer thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            item = self.pending.get()
            if item is None:
                if self.carried and not self.failed.is_set():
                    try:
                        self.dst.write(self.carry[: self.carried])
                    except BaseException as exc:
                        self.errors.append(exc)
                        self.failed.set()
                return
            future, slot = item
            try:
                out, plain = future.result()  # always wait: the worker may still use the slot
                if not self.failed.is_set():
                    self._emit(slot, out)
                    slot.written = plain
            except BaseException as exc:  # handed to the calling thread
                self.errors.append(exc)
                self.failed.set()
            finally:
                self.free.put(slot)

    def _emit(self, slot: _Slot, out: int) -> None:
        """Write the slot's ``out`` bytes after what was held back, up to an ``ALIGN`` boundary
        of the file; hold back the rest (less than ``ALIGN`` bytes) for the next write."""
        if self.position is None:
            self.dst.write(slot.outview[:out])
            return
        held = self.carried
        start = ALIGN - held
        framed = slot.framed
        framed[start:ALIGN] = self.carry[:held]
        total = held + out
        n = max(0, total - (self.position + total) % ALIGN)
        if n:
            self.dst.write(framed[start : start + n])
            self.position += n
        self.carried = total - n
        self.carry[: self.carried] = framed[start + n : start + total]

    def _job(self, batch: memoryview, slot: _Slot, index: int, last: bool) -> tuple[int, int]:
        out = self.loop.codec(self.aead, batch, slot.outview, index, last, self.chunk)
        return out, self.loop.plaintext(len(batch), out)

    def _submit(
        self,
        pool: ThreadPoolExecutor | None,
        batch: memoryview,
        slot: _Slot,
        index: int,
        last: bool,
    ) -> Future[tuple[int, int]]:
        """Run one batch on a worker, or right here when there are no workers (the calling
        thread then reads and encrypts while the writer thread writes the previous batch)."""
        if pool is not None:
            return pool.submit(self._job, batch, slot, index, last)
        done: Future[tuple[int, int]] = Future()
        try:
            done.set_result(self._job(batch, slot, index, last))
        except Exception as exc:  # handed to the writer, which reports it like a worker's
            self.stop.set()  # read no further; the writer still writes the batches before
            done.set_exception(exc)
        return done

    # -- the calling thread -------------------------------------------------------------------

    def run(self) -> int:
        """Process all of the input; return the plaintext length."""
        try:
            slot = self._slot()
            batch = self._read(slot)
            if len(batch) == self.in_size:
                nxt = self._slot()
                following = self._read(nxt)
                if following:
                    self._threaded(slot, batch, nxt, following)
                    return self.total
            # All of the input fits in one batch: no thread.
            out, plain = self._job(batch, slot, 0, True)
            self.dst.write(slot.outview[:out])
            self.total += plain
            if self.progress is not None:
                self.progress(plain)
            return self.total
        except BaseException:
            self.failed.set()
            raise
        finally:
            if self.memory is not None:
                self.src.seek(self.offset, io.SEEK_CUR)
            for s in self.slots:
                s.release()
            wipe(self.carry)  # it may hold authenticated plaintext

    def _threaded(
        self, slot: _Slot, batch: memoryview, lookahead: _Slot, following: memoryview
    ) -> None:
        pool = (
            ThreadPoolExecutor(self.workers, thread_name_prefix="kmsenvelope-chunks")
            if self.workers > 0
            else None
        )
        writer = threading.Thread(target=self._write_loop, name="kmsenvelope-writer", daemon=True)
        writer.start()
        nxt: _Slot | None = lookahead
        try:
            index = 0
            while True:
                last = not following
                self.pending.put((self._submit(pool, batch, slot, index, last), slot))
                if last or self.failed.is_set() or self.stop.is_set():
                    if nxt is not None:
                        self.free.put(nxt)
                    break
                assert nxt is not None
                slot, batch, index = nxt, following, index + self.per_batch
                if len(batch) < self.in_size:  # a short read: the end of the input
                    nxt, following = None, batch[:0]
                    continue
                nxt = self._slot()
                following = self._read(nxt)
        except BaseException:
            self.failed.set()  # the writer drops what is still queued
            raise
        finally:
            self.pending.put(None)
            writer.join()
            if pool is not None:
                pool.shutdown(wait=True)
            while True:
                try:
                    self._report(self.free.get_nowait())
                except queue.Empty:
                    break
        if self.errors:
            raise self.errors[0]


# -- in memory -------------------------------------------------------------------------------


def encrypt_bytes(
    data: bytes | bytearray | memoryview, payload_key: bytes, chunk_size: int
) -> bytes:
    """In-memory form of :func:`encrypt_payload`."""
    aead = AESGCM(payload_key)
    length = len(data)
    if length <= chunk_size:
        return aead.encrypt(SINGLE_FINAL_NONCE, data, None)
    last_index = (length - 1) // chunk_size
    out = bytearray(length + (last_index + 1) * TAG_SIZE)
    seal_chunks(aead, memoryview(data), memoryview(out), 0, True, chunk_size)
    return bytes(out)


def decrypt_bytes(payload: bytes | memoryview, payload_key: bytes, chunk_size: int) -> bytes:
    """In-memory form of :func:`decrypt_payload`; nothing is returned unless all chunks pass."""
    length = len(payload)
    if TAG_SIZE <= length <= chunk_size + TAG_SIZE:  # one chunk, the last
        try:
            return AESGCM(payload_key).decrypt(SINGLE_FINAL_NONCE, payload, None)
        except InvalidTag:
            raise AuthenticationError() from None
    plain = payload_length(length, chunk_size)
    if plain is None:
        raise AuthenticationError()
    out = bytearray(plain)
    try:
        open_chunks(AESGCM(payload_key), memoryview(payload), memoryview(out), 0, True, chunk_size)
    except AuthenticationError:
        wipe(out)  # it may hold the unauthenticated plaintext of the failing chunk
        raise
    return bytes(out)


# -- the payload loop ------------------------------------------------------------------------


class PayloadLoop:
    """The one payload loop, for one direction (the chunk codec it runs): its ``run`` method is
    :func:`encrypt_payload` or :func:`decrypt_payload`. A ``BytesIO`` of one chunk or less is
    done in memory; anything else runs in the pipeline."""

    def __init__(
        self,
        codec: ChunkCodec,
        in_memory: Callable[[memoryview, bytes, int], bytes],
        *,
        decrypting: bool,
    ) -> None:
        self.codec = codec
        self.in_memory = in_memory
        self.decrypting = decrypting
        self.input_tag = TAG_SIZE if decrypting else 0  # the ciphertext side has the tags

    def __repr__(self) -> str:
        return f"<PayloadLoop {'decrypting' if self.decrypting else 'encrypting'}>"

    def blocks(self, chunk: int) -> tuple[int, int]:
        """Input and output bytes of one full chunk."""
        return chunk + self.input_tag, chunk + TAG_SIZE - self.input_tag

    def plaintext(self, read: int, written: int) -> int:
        """Plaintext bytes in a batch of ``read`` input bytes that became ``written`` bytes."""
        return written if self.decrypting else read

    def run(
        self,
        src: BinaryIO,
        dst: BinaryIO,
        payload_key: bytes,
        chunk_size: int,
        progress: Progress | None = None,
        *,
        workers: int | None = None,
    ) -> int:
        """Run all of ``src`` through the chunk codec into ``dst``; return the plaintext length.

        Decrypting, each chunk is authenticated before any of it is written; truncation,
        reordering, duplication and trailing data all raise ``AuthenticationError``.
        ``progress`` is called on the calling thread with each batch's plaintext bytes.
        """
        memory = _memory_source(src)
        if memory is not None and memory.nbytes <= chunk_size + self.input_tag:  # one chunk
            src.seek(memory.nbytes, io.SEEK_CUR)
            out = self.in_memory(memory, payload_key, chunk_size)
            dst.write(out)
            plain = self.plaintext(memory.nbytes, len(out))
            if progress is not None:
                progress(plain)
            return plain
        aead = AESGCM(payload_key)
        return _Pipeline(self, src, dst, aead, chunk_size, progress, workers).run()


# Two bound methods, as ``random.randint`` is one of a module-level ``Random``.
encrypt_payload = PayloadLoop(seal_chunks, encrypt_bytes, decrypting=False).run
"""Encrypt all of ``src`` into ``dst`` as v1 chunks; return the plaintext length."""
decrypt_payload = PayloadLoop(open_chunks, decrypt_bytes, decrypting=True).run
"""Authenticate and decrypt v1 chunks from ``src`` into ``dst``; return the plaintext length."""
