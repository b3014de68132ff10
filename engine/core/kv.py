"""Paged KV-cache bookkeeping: fixed-size blocks, per-sequence block tables and a prefix
cache keyed by chained hashes of full blocks.

A block's hash covers its tokens and, through the previous block's hash, everything
before it, so equal hashes mean equal prefixes; hits are still verified against the
stored tokens. Freed blocks keep their contents and hash until they are handed out
again, least recently freed first, so a finished request's prefix stays reusable.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sequence import Sequence


@dataclass
class Block:
    ref_count: int = 0
    hash: int | None = None
    tokens: tuple[int, ...] = ()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.blocks = [Block() for _ in range(num_blocks)]
        self.free: dict[int, None] = dict.fromkeys(range(num_blocks))  # ordered: oldest first
        self.by_hash: dict[int, int] = {}
        # Untouched blocks are handed out in id order before any freed one, so the highest id
        # ever taken counts the blocks whose memory was ever written.
        self.touched = 0
        self.prefix_queries = 0  # tokens looked up
        self.prefix_hits = 0  # tokens found

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_needed(self, seq: Sequence, new_tokens: int) -> int:
        total = -(-(seq.num_computed_tokens + new_tokens) // self.block_size)
        return max(0, total - len(seq.block_table))

    def _take(self) -> int:
        bid = next(iter(self.free))
        del self.free[bid]
        self.touched = max(self.touched, bid + 1)
        block = self.blocks[bid]
        if block.hash is not None and self.by_hash.get(block.hash) == bid:
            del self.by_hash[block.hash]
        block.hash, block.tokens, block.ref_count = None, (), 1
        return bid

    def _chunk(self, seq: Sequence, index: int) -> tuple[int, ...]:
        return tuple(seq.token_ids[index * self.block_size:(index + 1) * self.block_size])

    def _hash(self, seq: Sequence, index: int) -> int:
        prev = seq.block_hashes[index - 1] if index else 0
        return hash((prev, self._chunk(seq, index)))

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding a prefix of seq, leaving at least one token to compute."""
        # Cached positions are not computed, so they would have no logits for prompt logprobs.
        if not self.prefix_caching or seq.prompt_logprobs is not None:
            return []
        found: list[int] = []
        hashes: list[int] = []
        for index in range((seq.num_tokens - 1) // self.block_size):
            prev = hashes[-1] if hashes else 0
            tokens = self._chunk(seq, index)
            bid = self.by_hash.get(hash((prev, tokens)))
            if bid is None or self.blocks[bid].tokens != tokens:
                break
            found.append(bid)
            hashes.append(self.blocks[bid].hash)
        return found

    def admit(self, seq: Sequence, cached: list[int]) -> None:
        """Give a waiting sequence its cached prefix blocks."""
        for bid in cached:
            block = self.blocks[bid]
            if block.ref_count == 0:
                del self.free[bid]
            block.ref_count += 1
            seq.block_hashes.append(block.hash)
        seq.block_table = list(cached)
        seq.num_computed_tokens = len(cached) * self.block_size
        self.prefix_queries += seq.num_tokens
        self.prefix_hits += seq.num_computed_tokens

    def can_allocate(self, seq: Sequence, new_tokens: int, cached: list[int] | None = None) -> bool:
        """Whether `new_tokens` more tokens fit; `cached` = prefix blocks it would be admitted with."""
        if not cached:
            return self.blocks_needed(seq, new_tokens) <= self.num_free
        fresh = -(-(len(cached) * self.block_size + new_tokens) // self.block_size) - len(cached)
        # Cached blocks nobody holds sit in the free list: taking them uses free blocks too.
        idle = sum(1 for bid in cached if self.blocks[bid].ref_count == 0)
        return fresh + idle <= self.num_free

    def allocate(self, seq: Sequence, new_tokens: int) -> None:
        for _ in range(self.blocks_needed(seq, new_tokens)):
            seq.block_table.append(self._take())

    def commit(self, seq: Sequence) -> None:
        """Publish the blocks that the last step filled completely, for prefix reuse."""
        if not self.prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        for index in range(len(seq.block_hashes), full):
            h = self._hash(seq, index)
            seq.block_hashes.append(h)
            bid = seq.block_table[index]
            block = self.blocks[bid]
            block.hash, block.tokens = h, self._chunk(seq, index)
            self.by_hash.setdefault(h, bid)

    def release(self, seq: Sequence) -> None:
        # Tail blocks go back first so that shared prefixes are the last to be reused.
        for bid in reversed(seq.block_table):
            block = self.blocks[bid]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[bid] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0

    def usage(self) -> tuple[int, int]:
        """(blocks held by live sequences, all blocks)."""
        return self.num_blocks - self.num_free, self.num_blocks
