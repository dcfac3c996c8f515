"""Keyed pseudo-random permutations and uniform draws over row numbers, computed for any
slice of the rows on demand, so that shuffling ``n`` rows never holds ``n`` indices.

A :class:`KeyedPermutation` is a bijection of ``{0, ..., n - 1}``: a four-round Feistel
network on the smallest even number of bits that covers ``n``, with cycle walking to stay
below ``n``. :func:`keyed_uniforms` gives each (row, column) a fixed uniform number in
``[0, 1)`` for a key, so that a row's draw does not depend on which other rows it is read
with.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KeyedPermutation", "keyed_uniforms", "mix"]

_ROUNDS = 4
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser of unsigned 64-bit integers: a bijection whose output bits
    each depend on every input bit (arithmetic wraps modulo 2**64)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _round_keys(key: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        steps = np.arange(1, _ROUNDS + 1, dtype=np.uint64) * _GOLDEN
        return mix(steps + mix(np.uint64(key % 2**64)))


class KeyedPermutation:
    """A pseudo-random permutation of ``{0, ..., n - 1}`` fixed by ``key``.

    Parameters
    ----------
    n : int
        The number of items permuted (at least 1, below ``2**62``).
    key : int
        Selects the permutation; equal keys give equal permutations.
    """

    def __init__(self, n: int, key: int) -> None:
        if not 1 <= n < 2**62:
            raise ValueError(f"a keyed permutation needs 1 <= n < 2**62, got {n}.")
        self.n = int(n)
        self._half = max(1, (int(n - 1).bit_length() + 1) // 2)
        self._mask = np.uint64((1 << self._half) - 1)
        self._keys = _round_keys(key)

    def _rounds(self, x: np.ndarray, inverse: bool = False) -> np.ndarray:
        shift = np.uint64(self._half)
        left, right = x >> shift, x & self._mask
        keys = self._keys[::-1] if inverse else self._keys
        for k in keys:
            if inverse:
                left, right = right ^ (mix(left ^ k) & self._mask), left
            else:
                left, right = right, left ^ (mix(right ^ k) & self._mask)
        return (left << shift) | right

    def _walk(self, positions: np.ndarray, inverse: bool) -> np.ndarray:
        p = np.asarray(positions, dtype=np.int64)
        if p.size and (p.min() < 0 or p.max() >= self.n):
            raise IndexError(f"positions must lie in [0, {self.n}).")
        x = self._rounds(p.astype(np.uint64), inverse)
        outside = x >= np.uint64(self.n)
        while outside.any():  # cycle walking: the cycle through p holds p itself
            x[outside] = self._rounds(x[outside], inverse)
            outside = x >= np.uint64(self.n)
        return x.astype(np.int64)

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The items at ``positions`` of the permuted order (an array of int)."""
        return self._walk(positions, inverse=False)

    def position(self, items: np.ndarray) -> np.ndarray:
        """Where ``items`` stand in the permuted order (the inverse permutation)."""
        return self._walk(items, inverse=True)


def keyed_uniforms(rows: np.ndarray, n_columns: int, key: int) -> np.ndarray:
    """Uniform numbers in ``[0, 1)`` of shape ``(len(rows), n_columns)``, one per (row,
    column), fixed by ``key`` and the row's number."""
    rows = np.asarray(rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        seeds = mix(rows ^ mix(np.uint64(key % 2**64)))
        cells = seeds[:, None] + np.arange(1, n_columns + 1, dtype=np.uint64) * _GOLDEN
    return (mix(cells) >> np.uint64(11)).astype(np.float64) * 2.0**-53
