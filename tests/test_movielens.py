"""MovieLens loading: the real recbole wheel, GroupLens folders, atomic folders, failures."""

from __future__ import annotations

import csv
import io
import sys
import zipfile

import numpy as np
import pytest

from recallstream.streaming import movielens
from recallstream.streaming.movielens import DatasetUnavailable, load_movielens, make_ratings


@pytest.fixture(scope="module")
def ml100k():
    return load_movielens("ml-100k")


def test_wheel_has_the_published_counts(ml100k):
    assert len(ml100k.ratings) == 100_000
    assert len(ml100k.users) == 943
    assert len(ml100k.items) == 1_682
    assert set(ml100k.ratings["user_id"]) == set(ml100k.users)
    assert set(ml100k.ratings["item_id"]) == set(ml100k.items)


def test_wheel_ratings_match_a_plain_csv_read_in_file_order(ml100k):
    member = "recbole/dataset_example/ml-100k/ml-100k.inter"
    with zipfile.ZipFile(movielens.recbole_wheel()) as archive:
        text = archive.read(member).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))[1:]
    assert ml100k.ratings["user_id"].tolist() == [r[0] for r in rows]
    assert ml100k.ratings["item_id"].tolist() == [r[1] for r in rows]
    assert ml100k.ratings["rating"].tolist() == [float(r[2]) for r in rows]
    assert ml100k.ratings["timestamp"].tolist() == [int(r[3]) for r in rows]
    # Known facts about ml-100k: first rating, ratings 1..5, mean 3.52986.
    assert tuple(ml100k.ratings[0].tolist()) == ("196", "242", 3.0, 881250949)
    assert set(ml100k.ratings["rating"].tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ml100k.ratings["rating"].astype(np.float64).sum() == 352_986


def test_wheel_profiles_and_catalog_are_typed(ml100k):
    assert ml100k.users["2"] == {"age": 53, "gender": "F", "occupation": "other",
                                 "zip_code": "94043"}
    assert ml100k.items["2"] == {"title": "GoldenEye", "release_year": 1995,
                                 "genres": ["Action", "Adventure", "Thriller"]}
    # recbole kept "(1995)" in this title and put "V" in the year column.
    assert ml100k.items["1412"]["title"] == "Land Before Time III: The Time of the Great Giving"
    assert ml100k.items["1412"]["release_year"] == 1995
    assert ml100k.items["543"]["title"] == "Misérables, Les"
    assert all(isinstance(u["age"], int) for u in ml100k.users.values())
    years = [i["release_year"] for i in ml100k.items.values()]
    assert years.count(None) == 1 and all(1900 < y < 2000 for y in years if y is not None)
    assert all(i["genres"] for i in ml100k.items.values())


def test_time_order_is_stable_and_sorted(ml100k):
    order = ml100k.time_order()
    timestamps = ml100k.ratings["timestamp"][order]
    assert np.all(np.diff(timestamps) >= 0)
    expected = sorted(range(len(ml100k.ratings)), key=lambda i: int(ml100k.ratings["timestamp"][i]))
    assert order.tolist() == expected  # Python's sort is stable too


def _write(path, lines, encoding="latin-1"):
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def test_grouplens_100k_folder(tmp_path):
    _write(tmp_path / "u.data", ["1\t10\t4\t881250950", "2\t20\t5\t881250949"])
    _write(tmp_path / "u.user", ["1|24|M|technician|85711", "2|53|F|other|T8H1N"])
    no_genre = ["0"] * 19
    genres_10 = list(no_genre)
    genres_10[1] = genres_10[5] = "1"  # Action, Comedy
    genres_20 = list(no_genre)
    genres_20[0] = "1"  # unknown
    _write(tmp_path / "u.item", [
        "|".join(["10", "Misérables, Les (1995)", "01-Jan-1995", "", "http://x"] + genres_10),
        "|".join(["20", "unknown", "", "", ""] + genres_20)])
    ml = load_movielens("ml-100k", data_dir=tmp_path)
    assert ml.ratings.tolist() == [("1", "10", 4.0, 881250950), ("2", "20", 5.0, 881250949)]
    assert ml.time_order().tolist() == [1, 0]
    assert ml.users == {
        "1": {"age": 24, "gender": "M", "occupation": "technician", "zip_code": "85711"},
        "2": {"age": 53, "gender": "F", "occupation": "other", "zip_code": "T8H1N"}}
    assert ml.items == {
        "10": {"title": "Misérables, Les", "release_year": 1995, "genres": ["Action", "Comedy"]},
        "20": {"title": "unknown", "release_year": None, "genres": ["unknown"]}}


def test_grouplens_100k_folder_uses_its_genre_file(tmp_path):
    _write(tmp_path / "u.data", ["1\t10\t4\t5"])
    _write(tmp_path / "u.user", ["1|24|M|technician|85711"])
    _write(tmp_path / "u.item", ["10|A (1990)|01-Jan-1990||x|0|1"])
    _write(tmp_path / "u.genre", ["first|0", "second|1", ""])
    assert load_movielens("ml-100k", tmp_path).items["10"]["genres"] == ["second"]


def test_grouplens_1m_folder(tmp_path):
    _write(tmp_path / "ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109"])
    _write(tmp_path / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072"])
    _write(tmp_path / "movies.dat", ["1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
                                     "661::James and the Giant Peach (1996)::Animation|Musical"])
    ml = load_movielens("ml-1m", data_dir=tmp_path)
    assert ml.ratings.tolist() == [("1", "1193", 5.0, 978300760), ("1", "661", 3.0, 978302109)]
    assert ml.users["1"] == {"age": 1, "gender": "F", "occupation": "K-12 student",
                             "zip_code": "48067"}
    assert ml.users["2"]["occupation"] == "self-employed"
    assert ml.items["661"] == {"title": "James and the Giant Peach", "release_year": 1996,
                               "genres": ["Animation", "Musical"]}


def test_atomic_folder(tmp_path):
    _write(tmp_path / "ml-100k.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                                        "3\t4\t2\t100"], encoding="utf-8")
    _write(tmp_path / "ml-100k.user", ["user_id:token\tage:token\tgender:token\toccupation:token"
                                       "\tzip_code:token", "3\t30\tF\twriter\t00000"], "utf-8")
    _write(tmp_path / "ml-100k.item", ["item_id:token\tmovie_title:token_seq\trelease_year:token"
                                       "\tclass:token_seq", "4\tunkonwn\tunkonwn\tunknown"], "utf-8")
    ml = load_movielens("ml-100k", data_dir=tmp_path)
    assert ml.ratings.tolist() == [("3", "4", 2.0, 100)]
    assert ml.users["3"]["age"] == 30
    assert ml.items["4"] == {"title": "unknown", "release_year": None, "genres": ["unknown"]}


def test_bad_arguments_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_movielens("ml-25m")
    with pytest.raises(ValueError, match="not shipped"):
        load_movielens("ml-1m")
    with pytest.raises(ValueError, match="no MovieLens files"):
        load_movielens("ml-100k", data_dir=tmp_path)


def test_failed_download_explains_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALLSTREAM_DATA_CACHE", str(tmp_path / "cache"))
    # A pip that always fails stands in for a machine without network.
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(DatasetUnavailable, match="--data-dir"):
        load_movielens("ml-100k")
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written wheel left behind


def test_corrupt_cached_wheel_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALLSTREAM_DATA_CACHE", str(tmp_path))
    (tmp_path / movielens.RECBOLE_WHEEL).write_bytes(b"not a wheel")
    with pytest.raises(DatasetUnavailable, match="sha256"):
        load_movielens("ml-100k")


def test_make_ratings_empty():
    assert len(make_ratings([])) == 0
