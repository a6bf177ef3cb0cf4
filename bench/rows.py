"""Which AG News rows each contender trains and scores on."""
from __future__ import annotations

import random


def sample_rows(n_total: int, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    rows = list(range(n_total))
    rng.shuffle(rows)
    return rows[: min(n, n_total)]


def train_spec_rows(train_rows: list[int], lengths, warmup_steps: int, steps: int, bs: int) -> list[int]:
    """Warmup rows, then the timed rows. The warmup rows are the longest of the timed ones: every contender's
    first timed batch would otherwise be its first at the largest size (length-grouped samplers put the
    longest batch first), paying the process's one-off growth to its largest activations (page faults,
    allocator) inside the timing. A real run pays that once in thousands of steps; so here the warmup does."""
    timed = train_rows[warmup_steps * bs: (warmup_steps + steps) * bs]
    return sorted(timed, key=lambda i: -lengths[i])[: warmup_steps * bs] + timed


def split_parts(rows: list[int], lengths, parts: int) -> list[list[int]]:
    """Disjoint parts with the same length distribution (round-robin over length-sorted rows)."""
    order = sorted(rows, key=lambda i: (lengths[i], i))
    out = [order[k::parts] for k in range(parts)]
    rng = random.Random(0)
    for p in out:
        rng.shuffle(p)  # input order as a user would give it (matters for Trainer's sequential batches)
    return out
