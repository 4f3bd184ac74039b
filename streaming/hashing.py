"""The two stable hash functions of recallstream, pure numpy and hashlib.

- :func:`splitmix64`: the SplitMix64 finaliser, a bijective 64-bit mix that
  turns counters into random bits (the impression simulation) and keys into
  unrelated buckets (the popularity estimator).
- :func:`blake2b64`: the 64-bit keyed BLAKE2b digest of a string id, the same
  in every process, machine and Python version (the built-in ``hash`` of a
  string is salted per process). Embedding buckets and popularity keys are both
  derived from it.

Checkpoints and tests depend on these values bit for bit: never change them.

Examples
--------
>>> hex(int(splitmix64(np.array([1], dtype=np.uint64))[0]))
'0x910a2dec89025cc1'
>>> hex(blake2b64("movie-1"))
'0x8d08ba0b1e1b55b1'
"""

from __future__ import annotations

import hashlib

import numpy as np

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser, elementwise on a ``uint64`` array (wrapping arithmetic).

    Examples
    --------
    >>> hex(int(splitmix64(np.array([0], dtype=np.uint64))[0]))  # SplitMix64 seeded 0, first output
    '0xe220a8397b1dcdaf'
    """
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN_GAMMA
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def blake2b64(value: str, key: bytes = b"") -> int:
    """The 8-byte BLAKE2b digest of ``value``'s UTF-8 bytes, keyed by ``key``, as a
    little-endian unsigned integer (an empty key is the unkeyed hash).

    Examples
    --------
    >>> blake2b64("a", key=b"genre") != blake2b64("a", key=b"title")
    True
    >>> blake2b64("café", key=b"title") == int.from_bytes(
    ...     hashlib.blake2b("café".encode(), digest_size=8, key=b"title").digest(), "little")
    True
    """
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little")
