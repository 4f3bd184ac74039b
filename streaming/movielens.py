"""MovieLens ratings, user profiles and item catalog, read without installing anything.

By default the MovieLens-100K files come from the recbole 1.2.1 wheel, which ships
them as "atomic files" (tab-separated, with typed headers such as ``user_id:token``)
under ``recbole/dataset_example/ml-100k/``. The wheel is fetched once with
``pip download --no-deps`` into a cache folder (``~/.cache/recallstream``, or
``$RECALLSTREAM_DATA_CACHE``) and read straight from the zip. A directory holding
the GroupLens files (ml-100k: ``u.data``, ``u.user``, ``u.item``; ml-1m:
``ratings.dat``, ``users.dat``, ``movies.dat``) or recbole atomic files
(``<name>.inter``, ``.user``, ``.item``) works too.

Whatever the source, the result has the same shape: ids are strings, ``age`` and
``release_year`` integers (``release_year`` None when unknown), genres a list.

Examples
--------
>>> ml = load_movielens("ml-100k")
>>> len(ml.ratings), len(ml.users), len(ml.items)
(100000, 943, 1682)
>>> ml.ratings[0]
np.void(('196', '242', 3.0, 881250949), dtype=[('user_id', '<U3'), ('item_id', '<U4'), ('rating', '<f4'), ('timestamp', '<i8')])
>>> ml.users["1"]
{'age': 24, 'gender': 'M', 'occupation': 'technician', 'zip_code': '85711'}
>>> ml.items["1"]
{'title': 'Toy Story', 'release_year': 1995, 'genres': ['Animation', "Children's", 'Comedy']}
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
# The wheel is trusted by content, not by name: a truncated or substituted file fails loudly.
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
WHEEL_DATASETS = ("ml-100k",)
KNOWN_DATASETS = ("ml-100k", "ml-1m")

# Genre columns of GroupLens ml-100k u.item, in order (u.genre, when present, wins).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western")

# ml-1m users.dat codes occupations; its README gives the names.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer")

# recbole's ml-100k.item writes item 267's missing title and year as this misspelling.
_RECBOLE_PLACEHOLDER = "unkonwn"
_TITLE_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")


class DatasetUnavailable(RuntimeError):
    """The MovieLens files could not be found or fetched."""


@dataclass(frozen=True)
class MovieLens:
    """One MovieLens dataset: ratings, user profiles and the item catalog.

    Attributes
    ----------
    ratings : numpy.ndarray
        Structured array in file order with fields ``user_id`` and ``item_id``
        (str), ``rating`` (float32) and ``timestamp`` (int64, epoch seconds).
    users : dict[str, dict]
        ``user_id -> {"age": int, "gender": str, "occupation": str, "zip_code": str}``.
    items : dict[str, dict]
        ``item_id -> {"title": str, "release_year": int | None, "genres": list[str]}``.
    source : str
        Where the files were read from.

    Examples
    --------
    >>> ratings = make_ratings([("1", "10", 4.0, 50), ("2", "10", 3.0, 40)])
    >>> ml = MovieLens(ratings, users={}, items={}, source="example")
    >>> ml.ratings["item_id"].tolist(), ml.time_order().tolist()
    (['10', '10'], [1, 0])
    """

    ratings: np.ndarray
    users: dict[str, dict]
    items: dict[str, dict]
    source: str

    def time_order(self) -> np.ndarray:
        """Indices of the ratings sorted by timestamp, ties kept in file order."""
        return np.argsort(self.ratings["timestamp"], kind="stable")


def make_ratings(rows: Iterable[tuple[str, str, float, int]]) -> np.ndarray:
    """Build the ratings structured array from ``(user_id, item_id, rating, timestamp)`` rows.

    Examples
    --------
    >>> r = make_ratings([("7", "42", 5.0, 881250949)])
    >>> r["user_id"][0], r["item_id"][0], float(r["rating"][0]), int(r["timestamp"][0])
    (np.str_('7'), np.str_('42'), 5.0, 881250949)
    """
    rows = list(rows)
    user_ids, item_ids, ratings, timestamps = zip(*rows) if rows else ((), (), (), ())
    user_ids = np.asarray(user_ids, dtype=str)
    item_ids = np.asarray(item_ids, dtype=str)
    table = np.empty(len(user_ids), dtype=[
        ("user_id", user_ids.dtype), ("item_id", item_ids.dtype),
        ("rating", np.float32), ("timestamp", np.int64)])
    table["user_id"], table["item_id"] = user_ids, item_ids
    table["rating"], table["timestamp"] = ratings, timestamps
    return table


def load_movielens(name: str = "ml-100k", data_dir: str | os.PathLike | None = None) -> MovieLens:
    """Load MovieLens ``name`` from ``data_dir``, or from the cached recbole wheel.

    Parameters
    ----------
    name : {"ml-100k", "ml-1m"}
        Which dataset. Only ml-100k is inside the recbole wheel; ml-1m needs ``data_dir``.
    data_dir : path, optional
        Folder with GroupLens files (ml-100k or ml-1m layout) or recbole atomic files.

    Raises
    ------
    ValueError
        Unknown ``name``, or ``data_dir`` holds no recognised files.
    DatasetUnavailable
        The wheel is not cached and cannot be downloaded.

    Examples
    --------
    >>> load_movielens("ml-100k").items["267"]  # recbole's "unkonwn" placeholder, normalised
    {'title': 'unknown', 'release_year': None, 'genres': ['unknown']}
    """
    if name not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {KNOWN_DATASETS}")
    if data_dir is not None:
        return _load_directory(name, Path(data_dir))
    if name not in WHEEL_DATASETS:
        raise ValueError(f"{name} is not shipped in the recbole wheel; pass data_dir "
                         f"(--data-dir), a folder with its GroupLens files")
    wheel = recbole_wheel()
    with zipfile.ZipFile(wheel) as archive:
        def lines(suffix: str) -> Iterator[str]:
            member = f"recbole/dataset_example/{name}/{name}.{suffix}"
            return iter(archive.read(member).decode("utf-8").splitlines())
        return _from_atomic(lines, source=f"{wheel}!{name}")


# --- the recbole wheel --------------------------------------------------------------------

def data_cache_dir() -> Path:
    """The download cache: ``$RECALLSTREAM_DATA_CACHE`` or ``~/.cache/recallstream``."""
    configured = os.environ.get("RECALLSTREAM_DATA_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "recallstream"


def recbole_wheel() -> Path:
    """Path of the cached recbole wheel, downloading it once with pip if needed."""
    cache = data_cache_dir()
    wheel = cache / RECBOLE_WHEEL
    if not wheel.exists():
        _download_wheel(cache)
    _check_sha256(wheel)
    return wheel


def _download_wheel(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    # Download into a private folder then rename, so concurrent loaders never read half a file.
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   RECBOLE_REQUIREMENT, "-d", scratch]
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(scratch) / RECBOLE_WHEEL
        if result.returncode != 0 or not downloaded.exists():
            raise DatasetUnavailable(
                f"could not download {RECBOLE_REQUIREMENT} (which carries MovieLens-100K) with "
                f"`{' '.join(command[1:])}`:\n{result.stderr.strip()}\n"
                f"Without network, copy {RECBOLE_WHEEL} into {cache} (or set "
                f"RECALLSTREAM_DATA_CACHE), or pass --data-dir DIR (data_dir=DIR) with a folder "
                f"holding the GroupLens ml-100k files u.data, u.user, u.item.")
        os.replace(downloaded, cache / RECBOLE_WHEEL)


def _check_sha256(wheel: Path) -> None:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != RECBOLE_WHEEL_SHA256:
        raise DatasetUnavailable(f"{wheel} has sha256 {digest}, expected "
                                 f"{RECBOLE_WHEEL_SHA256}; delete it to download it again")


# --- recbole atomic files -----------------------------------------------------------------

def _from_atomic(lines, source: str) -> MovieLens:
    """Parse ``.inter``, ``.user``, ``.item`` atomic files given ``lines(suffix)``."""
    ratings = make_ratings(
        (row["user_id"], row["item_id"], float(row["rating"]), int(float(row["timestamp"])))
        for row in _atomic_rows(lines("inter")))
    users = {row["user_id"]: _user(row["age"], row["gender"], row["occupation"], row["zip_code"])
             for row in _atomic_rows(lines("user"))}
    items = {row["item_id"]: _atomic_item(row) for row in _atomic_rows(lines("item"))}
    return MovieLens(ratings, users, items, source)


def _atomic_rows(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    # The header's "name:type" fields; the type is implied by the column, so drop it.
    names = [field.split(":")[0] for field in next(lines).split("\t")]
    for line in lines:
        if line:
            yield dict(zip(names, line.split("\t")))


def _atomic_item(row: dict[str, str]) -> dict:
    title = row["movie_title"]
    year = int(row["release_year"]) if row["release_year"].isdigit() else None
    if title == _RECBOLE_PLACEHOLDER:
        title = "unknown"
    match = _TITLE_YEAR.search(title)
    if match:  # a few titles kept their "(1995)" while the year column lost it
        title, year = title[:match.start()], year or int(match.group(1))
    return {"title": title, "release_year": year, "genres": row["class"].split()}


def _user(age: str, gender: str, occupation: str, zip_code: str) -> dict:
    return {"age": int(age), "gender": gender, "occupation": occupation, "zip_code": zip_code}


# --- GroupLens folders --------------------------------------------------------------------

def _load_directory(name: str, folder: Path) -> MovieLens:
    if (folder / "u.data").exists():
        return _from_grouplens_100k(folder)
    if (folder / "ratings.dat").exists():
        return _from_grouplens_1m(folder)
    if (folder / f"{name}.inter").exists():
        def lines(suffix: str) -> Iterator[str]:
            return iter((folder / f"{name}.{suffix}").read_text("utf-8").splitlines())
        return _from_atomic(lines, source=str(folder))
    raise ValueError(f"{folder} holds no MovieLens files: expected u.data/u.user/u.item "
                     f"(ml-100k), ratings.dat/users.dat/movies.dat (ml-1m) or {name}.inter")


def _split_lines(path: Path, separator: str) -> Iterator[list[str]]:
    # GroupLens files are latin-1 (titles such as "Misérables, Les").
    for line in path.read_text("latin-1").splitlines():
        if line:
            yield line.split(separator)


def _from_grouplens_100k(folder: Path) -> MovieLens:
    ratings = make_ratings((user, item, float(rating), int(ts))
                           for user, item, rating, ts in _split_lines(folder / "u.data", "\t"))
    users = {user: _user(age, gender, occupation, zip_code) for user, age, gender, occupation,
             zip_code in _split_lines(folder / "u.user", "|")}
    genres = ML100K_GENRES
    if (folder / "u.genre").exists():
        genres = tuple(genre for genre, _ in _split_lines(folder / "u.genre", "|"))
    items = {fields[0]: _grouplens_100k_item(fields, genres)
             for fields in _split_lines(folder / "u.item", "|")}
    return MovieLens(ratings, users, items, str(folder))


def _grouplens_100k_item(fields: list[str], genre_names: tuple[str, ...]) -> dict:
    title, release_date, flags = fields[1], fields[2], fields[5:]
    match = _TITLE_YEAR.search(title)
    if match:
        title = title[:match.start()]
    # The release date looks like "01-Jan-1995" (empty for the "unknown" movie).
    year = int(release_date[-4:]) if release_date[-4:].isdigit() else None
    genres = [genre for genre, flag in zip(genre_names, flags) if flag == "1"]
    return {"title": title, "release_year": year, "genres": genres}


def _from_grouplens_1m(folder: Path) -> MovieLens:
    ratings = make_ratings((user, item, float(rating), int(ts))
                           for user, item, rating, ts in _split_lines(folder / "ratings.dat", "::"))
    users = {user: _user(age, gender, ML1M_OCCUPATIONS[int(occupation)], zip_code)
             for user, gender, age, occupation, zip_code
             in _split_lines(folder / "users.dat", "::")}
    items = {}
    for item, title, genres in _split_lines(folder / "movies.dat", "::"):
        match = _TITLE_YEAR.search(title)
        year = int(match.group(1)) if match else None
        items[item] = {"title": title[:match.start()] if match else title,
                       "release_year": year, "genres": genres.split("|")}
    return MovieLens(ratings, users, items, str(folder))
