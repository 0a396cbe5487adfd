"""A batch of sequences in one forward step: how many new tokens each computes
and how many it already holds in the KV cache.

Prefill: ``new = prompt length``, ``cached = 0``. Decode: ``new = 1``,
``cached = context length``. Chunked prefill and mixed batches are any mix.
Attention work is counted exactly for causal masking, sliding windows and
chunked local attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from moesim.model.errors import MoesimError
from moesim.model.limits import MAX_BATCH, MAX_BATCH_TOKENS, MAX_TOKENS


@dataclass(frozen=True)
class Batch:
    """Sequences of one step.

    Attributes:
        new_tokens: per sequence, tokens computed in this step, shape [B].
        cached_tokens: per sequence, tokens already in the KV cache, shape [B].
        phase: ``prefill``, ``decode`` or ``mixed`` (a label for reports).
    """

    new_tokens: tuple[int, ...]
    cached_tokens: tuple[int, ...]
    phase: str = "mixed"

    def __post_init__(self) -> None:
        if len(self.new_tokens) != len(self.cached_tokens):
            raise MoesimError(
                "a batch needs as many cached as new token counts", "give one (new, cached) pair per sequence"
            )
        if not self.new_tokens:
            raise MoesimError("a batch needs at least one sequence", "use --batch 1 or more")
        if min(self.new_tokens) < 1 or min(self.cached_tokens) < 0:
            raise MoesimError(
                "new tokens must be >= 1 and cached tokens >= 0 per sequence", "fix the batch sizes and context lengths"
            )

    @classmethod
    def prefill(cls, batch: int, prompt_len: int, cached: int = 0) -> Batch:
        """``batch`` prompts of ``prompt_len`` tokens each (after ``cached`` prefix tokens)."""
        _positive(batch=batch, prompt_len=prompt_len)
        _bounded("--batch", batch, MAX_BATCH, "sequences")
        _bounded("--ctx", prompt_len + cached, MAX_TOKENS, "tokens per sequence")
        _bounded("--batch x --ctx", batch * (prompt_len + cached), MAX_BATCH_TOKENS, "tokens in the batch")
        return cls((prompt_len,) * batch, (cached,) * batch, "prefill")

    @classmethod
    def decode(cls, batch: int, ctx: int) -> Batch:
        """``batch`` sequences each decoding one token after ``ctx`` cached tokens."""
        _positive(batch=batch)
        if ctx < 0:
            raise MoesimError(f"context length must be >= 0, got {ctx}", "use --ctx 0 or more")
        _bounded("--batch", batch, MAX_BATCH, "sequences")
        _bounded("--ctx", ctx, MAX_TOKENS, "tokens per sequence")
        _bounded("--batch x --ctx", batch * (ctx + 1), MAX_BATCH_TOKENS, "tokens in the batch")
        return cls((1,) * batch, (ctx,) * batch, "decode")

    @cached_property
    def _new(self) -> np.ndarray:
        return np.asarray(self.new_tokens, dtype=np.int64)

    @cached_property
    def _cached(self) -> np.ndarray:
        return np.asarray(self.cached_tokens, dtype=np.int64)

    @property
    def sequences(self) -> int:
        """Number of sequences B."""
        return len(self.new_tokens)

    @cached_property
    def tokens(self) -> int:
        """Tokens computed in this step (sum of new tokens)."""
        return int(self._new.sum())

    @property
    def logit_tokens(self) -> int:
        """Tokens whose logits are computed: one per sequence (the last new token)."""
        return self.sequences

    def attention_pairs(self, window: int | None = None, chunk: int | None = None) -> int:
        """Query-key pairs of causal attention, summed over sequences.

        New token i (0-based) of a sequence with c cached tokens attends to
        c + i + 1 keys, or to at most ``window`` keys with a sliding window,
        or with chunked local attention (``chunk`` = C tokens, Llama 4) to the
        (c + i) mod C + 1 keys of its own chunk.
        """
        n, c = self._new, self._cached
        if chunk is not None:
            return int((_chunk_pairs(c + n, int(chunk)) - _chunk_pairs(c, int(chunk))).sum())
        if window is None:
            return int((n * c + n * (n + 1) // 2).sum())
        # keys for token i: min(window, c + i + 1); split at the i where it saturates
        w = int(window)
        full = np.clip(w - c, 0, n)  # tokens whose key count c+i+1 <= w: i < w - c
        below = full * c + full * (full + 1) // 2
        return int((below + (n - full) * w).sum())

    def kv_tokens_read(self, window: int | None = None, chunk: int | None = None) -> int:
        """KV-cache tokens read once per sequence: min(window, cached + new).

        With chunked local attention (``chunk`` = C tokens) a sequence reads the
        chunks its new tokens fall in: from the start of the first new token's
        chunk, floor(c / C) * C, up to c + n (decode: (c mod C) + 1 tokens).
        """
        return int(self._kv_read_each(window, chunk).sum())

    def _kv_read_each(self, window: int | None, chunk: int | None) -> np.ndarray:
        """`kv_tokens_read` per sequence, shape [B]."""
        total = self._cached + self._new
        if chunk is not None:
            return total - self._cached // int(chunk) * int(chunk)
        if window is not None:
            return np.minimum(total, window)
        return total

    def one_query(self, window: int | None = None, chunk: int | None = None) -> tuple[int, int]:
        """(sequences, KV-cache tokens they read) of the sequences with one new token in this step (the decoding
        ones), as `kv_tokens_read` counts them."""
        one = self._new == 1
        return int(one.sum()), int(self._kv_read_each(window, chunk)[one].sum())

    def split(self, parts: int) -> list[Batch]:
        """Deal the sequences round-robin into ``parts`` batches (empty ones dropped)."""
        out = []
        for p in range(parts):
            new, cached = self.new_tokens[p::parts], self.cached_tokens[p::parts]
            if new:
                out.append(Batch(new, cached, self.phase))
        return out

    def describe(self) -> str:
        """E.g. ``decode B=64 ctx=2048`` or ``prefill B=4 len=1024``."""
        if self.phase == "decode" and len(set(self.cached_tokens)) == 1:
            return f"decode B={self.sequences} ctx={self.cached_tokens[0]}"
        if self.phase == "prefill" and len(set(self.new_tokens)) == 1:
            return f"prefill B={self.sequences} len={self.new_tokens[0]}"
        return f"{self.phase} B={self.sequences} tokens={self.tokens}"


def _chunk_pairs(positions: np.ndarray, chunk: int) -> np.ndarray:
    """Causal query-key pairs of the first ``positions`` tokens of a sequence under chunked local attention.

    Token p attends to the (p mod ``chunk``) + 1 keys of its own chunk, so P tokens hold
    q full chunks of chunk (chunk + 1) / 2 pairs each plus r (r + 1) / 2, with q, r = divmod(P, chunk).
    Shape: ``positions`` [B] -> [B].
    """
    q, r = np.divmod(positions, chunk)
    return q * (chunk * (chunk + 1) // 2) + r * (r + 1) // 2


def _positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise MoesimError(f"{name.replace('_', ' ')} must be >= 1, got {value}", "give a positive value")


def _bounded(flag: str, value: int, limit: int, what: str) -> None:
    """`MoesimError` naming ``flag`` when ``value`` exceeds ``limit`` (`model.limits`)."""
    if value > limit:
        raise MoesimError(f"{flag} {value:,} is over the limit of {limit:,} {what}", f"give {flag} at most {limit:,}")
