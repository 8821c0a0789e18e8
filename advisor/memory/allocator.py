"""PyTorch's CUDA caching allocator, as its documented policy describes it: what a trace of
allocations and frees reserves from the device (``max_memory_reserved``) beside what it
hands out (``max_memory_allocated``).

The policy (PyTorch docs, "CUDA semantics: memory management" and "Optimizing memory usage
with PYTORCH_CUDA_ALLOC_CONF"; ``c10/cuda/CUDACachingAllocator.cpp``'s constants and
comments):

- every request is rounded up to a multiple of 512 bytes (``kMinBlockSize``);
- requests of at most 1 MiB (``kSmallSize``) come from the small pool, whose segments are
  2 MiB (``kSmallBuffer``); larger ones from the large pool, whose new segments are 20 MiB
  (``kLargeBuffer``) for requests under 10 MiB (``kMinLargeAlloc``) and the request
  rounded up to 2 MiB (``kRoundLarge``) otherwise;
- a request takes the smallest cached free block of its pool that holds it (best fit);
  the rest of the block is split off when at least 512 bytes remain (small pool) or more
  than 1 MiB (large pool), else the whole block is handed out;
- a freed block merges with free neighbours of its own segment, never across segments;
  segments are returned to the driver only by ``empty_cache`` or when a ``cudaMalloc``
  fails (the retry after freeing the cached segments);
- with ``expandable_segments:True`` each pool is one segment that maps 2 MiB pages as it
  grows (large pool) and unmaps nothing until ``empty_cache``: what it reserves is its
  high-water mark rounded up to whole pages.

The replay is exact for that policy; it leaves out ``max_split_size_mb``,
``roundup_power2_divisions``, per-stream pools and CUDA-graph pools (defaults: off).
NOTE: verified against the documented constants, on traces recorded on the CPU
(``benchmarks/allocator_fit.py``); not against a CUDA device in this repository.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
MIN_LARGE_ALLOC = 10 << 20
LARGE_BUFFER = 20 << 20
ROUND_LARGE = 2 << 20

#: One event of a trace: ("alloc", id, bytes) or ("free", id, 0).
Event = tuple[Literal["alloc", "free"], int, int]


def round_size(size: int) -> int:
    """A request's size as the allocator hands it out (multiples of 512 bytes)."""
    if size < MIN_BLOCK:
        return MIN_BLOCK
    return MIN_BLOCK * -(-size // MIN_BLOCK)


def segment_size(size: int) -> int:
    """The ``cudaMalloc`` a (rounded) request makes when no cached block holds it."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * -(-size // ROUND_LARGE)


@dataclass
class _Block:
    segment: int
    offset: int
    size: int
    free: bool = True


@dataclass
class _Pool:
    """One pool: its free blocks sorted by (size, segment, offset), every block by place."""

    small: bool
    free: list[tuple[int, int, int]] = field(default_factory=list)
    blocks: dict[tuple[int, int], _Block] = field(default_factory=dict)  # by (seg, start)
    by_end: dict[tuple[int, int], _Block] = field(default_factory=dict)  # by (seg, end)
    ends: dict[int, int] = field(default_factory=dict)  # segment -> size

    def insert(self, b: _Block) -> None:
        self.blocks[(b.segment, b.offset)] = b
        self.by_end[(b.segment, b.offset + b.size)] = b

    def remove(self, b: _Block) -> None:
        del self.blocks[(b.segment, b.offset)]
        del self.by_end[(b.segment, b.offset + b.size)]

    def add_free(self, b: _Block) -> None:
        b.free = True
        bisect.insort(self.free, (b.size, b.segment, b.offset))

    def take_free(self, b: _Block) -> None:
        i = bisect.bisect_left(self.free, (b.size, b.segment, b.offset))
        del self.free[i]
        b.free = False


class Replay(NamedTuple):
    """What one trace reserved and allocated at most, bytes."""

    peak_allocated: int  # the rounded requests alive at once (max_memory_allocated)
    peak_reserved: int  # segments held at once (max_memory_reserved)
    peak_requested: int  # the requests' own bytes alive at once


class CachingAllocator:
    """The caching allocator's policy over one device (see the module docstring)."""

    def __init__(self, *, expandable_segments: bool = False) -> None:
        self.expandable = expandable_segments
        self.pools = (_Pool(small=True), _Pool(small=False))
        self.live: dict[int, tuple[_Pool, _Block, int]] = {}
        self.allocated = self.reserved = self.requested = 0
        self.peak_allocated = self.peak_reserved = self.peak_requested = 0
        self._segments = 0
        self._high = [0, 0]  # expandable: each pool's mapped high-water mark

    def malloc(self, key: int, size: int) -> None:
        """Hand out ``size`` bytes under ``key``."""
        rounded = round_size(size)
        small = rounded <= SMALL_SIZE
        pool = self.pools[0 if small else 1]
        i = bisect.bisect_left(pool.free, (rounded, -1, -1))
        if i < len(pool.free):
            _, seg, off = pool.free[i]
            block = pool.blocks[(seg, off)]
            pool.take_free(block)
        else:
            block = self._grow(pool, rounded)
        remaining = block.size - rounded
        if remaining >= MIN_BLOCK if small else remaining > SMALL_SIZE:
            pool.remove(block)
            block.size = rounded
            pool.insert(block)
            rest = _Block(block.segment, block.offset + rounded, remaining)
            pool.insert(rest)
            pool.add_free(rest)
        self.live[key] = (pool, block, size)
        self.allocated += block.size
        self.requested += size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_requested = max(self.peak_requested, self.requested)

    def _grow(self, pool: _Pool, rounded: int) -> _Block:
        """A new segment (or, expandable, the pool's one segment extended) for a request."""
        if self.expandable:
            seg = 0 if pool.small else 1
            end = pool.ends.get(seg, 0)
            # The free block at the segment's end grows into the new pages.
            tail = pool.by_end.get((seg, end))
            if tail is not None and not tail.free:
                tail = None
            start = tail.offset if tail is not None else end
            if tail is not None:
                pool.take_free(tail)
                pool.remove(tail)
            new_end = start + rounded
            pool.ends[seg] = new_end
            mapped = ROUND_LARGE * -(-new_end // ROUND_LARGE)
            idx = 0 if pool.small else 1
            if mapped > self._high[idx]:
                self.reserved += mapped - self._high[idx]
                self._high[idx] = mapped
                self.peak_reserved = max(self.peak_reserved, self.reserved)
            block = _Block(seg, start, rounded, free=False)
            pool.insert(block)
            return block
        size = segment_size(rounded)
        self._segments += 1
        seg = self._segments
        pool.ends[seg] = size
        self.reserved += size
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        block = _Block(seg, 0, size, free=False)
        pool.insert(block)
        return block

    def free(self, key: int) -> None:
        """Return ``key``'s block to its pool, merged with free neighbours."""
        pool, block, size = self.live.pop(key)
        self.allocated -= block.size
        self.requested -= size
        seg = block.segment
        nxt = pool.blocks.get((seg, block.offset + block.size))
        if nxt is not None and nxt.free:
            pool.take_free(nxt)
            pool.remove(nxt)
            pool.remove(block)
            block.size += nxt.size
            pool.insert(block)
        prev = pool.by_end.get((seg, block.offset))
        if prev is not None and prev.free:
            pool.take_free(prev)
            pool.remove(prev)
            pool.remove(block)
            prev.size += block.size
            pool.insert(prev)
            block = prev
        pool.add_free(block)

    def replay(self, events: list[Event]) -> Replay:
        """Run a trace; the peaks it reached."""
        for kind, key, size in events:
            if kind == "alloc":
                self.malloc(key, size)
            else:
                self.free(key)
        return Replay(self.peak_allocated, self.peak_reserved, self.peak_requested)
