"""Stable hashing of string feature values into embedding buckets.

Python's built-in ``hash`` of a string is salted per process, so a model trained
in one process would look up different rows in the next. Here every value is
hashed with BLAKE2b (8-byte digest, keyed by the feature name;
:func:`recallstream.streaming.hashing.blake2b64`), which gives the
same bucket on every machine, process and Python version.

Bucket 0 is reserved for missing values (``None`` or the empty string); every
present value maps to ``1 .. num_buckets - 1``. Keying by the feature name keeps
two features that share a table size from colliding in the same way.

Examples
--------
>>> stable_hash(["42", "42", "7"], key="item_id").tolist() == stable_hash(["42", "42", "7"], key="item_id").tolist()
True
>>> bucketize(["42", None, "", "7"], num_buckets=1000, key="item_id").tolist()[1:3]
[0, 0]
>>> int(bucketize(["42"], num_buckets=2, key="item_id")[0])   # one usable bucket
1
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from recallstream.streaming.hashing import blake2b64

MISSING_BUCKET = 0

# Hashing a string costs ~1 us; ids repeat a lot in a stream, so remember recent ones.
_CACHE_LIMIT = 1 << 20
_caches: dict[str, dict[str, int]] = {}  # hash key -> {value: hash}


def stable_hash(values: Iterable[str], key: str = "") -> np.ndarray:
    """64-bit BLAKE2b hash of each string, keyed by ``key``.

    Parameters
    ----------
    values
        Strings (other objects are hashed through ``str``).
    key
        Distinguishes hash families (use the feature name); at most 64 bytes.

    Returns
    -------
    numpy.ndarray
        ``uint64`` array, one hash per value.

    Examples
    --------
    >>> h = stable_hash(["a", "b"], key="genre")
    >>> h.dtype, len(set(h.tolist()))
    (dtype('uint64'), 2)
    >>> stable_hash(["a"], key="genre")[0] != stable_hash(["a"], key="title")[0]
    np.True_
    """
    key_bytes = key.encode("utf-8")
    if len(key_bytes) > 64:
        raise ValueError(f"hash key must be at most 64 bytes, got {len(key_bytes)}")
    cache = _caches.setdefault(key, {})
    values = values if isinstance(values, list) else list(values)
    try:  # the fast path: every value a string hashed before
        hashes = [cache[value] for value in values]
    except (KeyError, TypeError):
        hashes = [_hash_one(str(value), cache, key_bytes) for value in values]
    return np.array(hashes, dtype=np.uint64)


def bucketize(values: Iterable[str | None], num_buckets: int, key: str = "") -> np.ndarray:
    """Bucket index of each value: 0 for missing, else ``1 + hash % (num_buckets - 1)``.

    Parameters
    ----------
    values
        Strings; ``None`` and ``""`` are missing.
    num_buckets
        Table size including the reserved missing bucket; at least 2.
    key
        Hash family (the feature name).

    Returns
    -------
    numpy.ndarray
        ``int64`` bucket indices in ``[0, num_buckets)``.

    Examples
    --------
    >>> b = bucketize(["x", None, "x"], num_buckets=10, key="f")
    >>> b[0] == b[2], int(b[1]), bool(1 <= b[0] < 10)
    (np.True_, 0, True)
    """
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be at least 2 (bucket 0 is reserved), got {num_buckets}")
    values = values if isinstance(values, list) else list(values)
    cache = _caches.get(key)
    if cache is not None and "" not in cache:
        try:  # the fast path: every value a string hashed before (None never is)
            hashes = np.array([cache[value] for value in values], dtype=np.uint64)
        except (KeyError, TypeError):
            pass
        else:
            return (hashes % np.uint64(num_buckets - 1)).astype(np.int64) + 1
    present = np.fromiter((v is not None and v != "" for v in values), dtype=bool, count=len(values))
    hashes = stable_hash((v for v, p in zip(values, present) if p), key=key)
    buckets = np.zeros(len(values), dtype=np.int64)
    buckets[present] = (hashes % np.uint64(num_buckets - 1)).astype(np.int64) + 1
    return buckets


def _hash_one(value: str, cache: dict[str, int], key_bytes: bytes) -> int:
    cached = cache.get(value)
    if cached is None:
        cached = blake2b64(value, key_bytes)
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[value] = cached
    return cached
