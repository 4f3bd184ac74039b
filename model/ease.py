"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).

An item-item model with a closed form: for the binary user-item matrix ``X``,
``P = (X^T X + lambda I)^-1`` and ``B = I - P diag(1 / diag(P))`` (so the
diagonal of ``B`` is zero); a user with history row ``x`` scores ``x @ B``. The
stream evaluation refits it at every day boundary as a baseline: a strong
daily item-item model scored with each user's up-to-date history.

Examples
--------
Items 0 and 1 always go together, item 2 is on its own:

>>> import numpy as np
>>> ease = Ease(num_items=3, l2=1.0)
>>> ease.fit(users=np.array([0, 0, 1, 1, 2]), items=np.array([0, 1, 0, 1, 2]))
>>> scores = ease.scores(np.array([[1.0, 0.0, 0.0]]))
>>> int(scores[0].argmax()), bool(scores[0, 1] > scores[0, 2])
(1, True)
"""

from __future__ import annotations

import numpy as np


class Ease:
    """The EASE item-item model over ``num_items`` item indices (see the module docstring).

    Parameters
    ----------
    num_items : int
    l2 : float
        The ridge penalty lambda (larger: smoother, more popular items).
    """

    def __init__(self, num_items: int, l2: float = 200.0) -> None:
        if not l2 > 0:
            raise ValueError(f"l2 must be positive, got {l2}")
        self.num_items = num_items
        self.l2 = l2
        self.weights = np.zeros((num_items, num_items), dtype=np.float32)
        self._gram = np.zeros((num_items, num_items), dtype=np.float64)  # X^T X, kept up to date
        self._items_of: dict[int, set[int]] = {}

    def add(self, users: np.ndarray, items: np.ndarray) -> None:
        """Take (user index, item index) interactions in (repeats count once); :meth:`refit` uses them."""
        for user, item in zip(users.tolist(), items.tolist()):
            before = self._items_of.setdefault(user, set())
            if item in before:
                continue
            others = list(before)
            self._gram[item, others] += 1.0
            self._gram[others, item] += 1.0
            self._gram[item, item] += 1.0
            before.add(item)

    def refit(self) -> None:
        """The closed form on every interaction added so far."""
        gram = self._gram.astype(np.float32)
        gram[np.diag_indices(self.num_items)] += self.l2
        inverse = np.linalg.inv(gram)  # float32: twice as fast, ample for a ridge of this size
        weights = -inverse / np.diag(inverse)
        weights[np.diag_indices(self.num_items)] = 0.0
        self.weights = weights.astype(np.float32)

    def fit(self, users: np.ndarray, items: np.ndarray) -> None:
        """Refit on exactly these (user index, item index) interactions."""
        self.__init__(self.num_items, self.l2)
        self.add(users, items)
        self.refit()

    def scores(self, histories: np.ndarray) -> np.ndarray:
        """``[B, num_items]`` history rows (1 where the user clicked) -> ``[B, num_items]`` scores."""
        return histories.astype(np.float32, copy=False) @ self.weights
