"""Tests of the Qdrant vector index: the embedded backends (qdrant-client's local mode in
memory and in a folder, Qdrant Edge in a folder) and a server when QDRANT_URL is set."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

import numpy as np
import pytest

from recallstream.model.vector_index import RetryPolicy, VectorIndex, point_id


def unit_rows(rng, n, dim):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force_top(vectors, query, k):
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = normed @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


EMBEDDED = ["memory", "edge"]  # the backends every test of an `index` runs on


def location(backend: str, folder) -> str:
    return ":memory:" if backend == "memory" else f"{backend}:{folder}" if backend == "edge" else str(folder)


@pytest.fixture(params=EMBEDDED)
def index(request, tmp_path):
    index = VectorIndex.connect(location(request.param, tmp_path / "qdrant"))
    yield index
    index.close()


def check_roundtrip(index: VectorIndex, name: str) -> None:
    rng = np.random.default_rng(0)
    ids = [f"item-{i}" for i in range(300)]
    vectors = rng.normal(size=(300, 16)).astype(np.float32) * 3  # not normalised
    payloads = [{"genres": ["g" + str(i % 5)], "model_version": 1} for i in range(300)]
    index.ensure_collection(name, dim=16)
    index.ensure_collection(name, dim=16)  # idempotent
    index.upsert(name, ids, vectors, payloads)
    assert index.count(name) == 300

    for query in rng.normal(size=(5, 16)):
        order, scores = brute_force_top(vectors, query, 10)
        hits = index.search(name, query, limit=10)
        assert [h[0] for h in hits] == [ids[i] for i in order]
        np.testing.assert_allclose([h[1] for h in hits], scores, rtol=1e-4, atol=1e-5)
        assert hits[0][2] == {**payloads[order[0]], "item_id": ids[order[0]]}

    # re-upsert of the same ids overwrites: same count, new vectors and payloads
    index.upsert(name, ids[:50], -vectors[:50], [{"model_version": 2}] * 50)
    assert index.count(name) == 300
    hit = index.search(name, -vectors[7], limit=1)[0]
    assert hit[0] == "item-7" and hit[2] == {"model_version": 2, "item_id": "item-7"}

    index.delete(name, ids[:100] + ["never-there"])
    assert index.count(name) == 200
    hits = index.search(name, vectors[150], limit=300)
    assert len(hits) == 200 and not {h[0] for h in hits} & set(ids[:100])


def test_roundtrip_in_memory_matches_numpy_brute_force(index):
    check_roundtrip(index, "items")


def test_search_excludes_ids_and_retrieves_normalised_vectors(index):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    ids = [str(i) for i in range(40)]
    index.ensure_collection("items", dim=8)
    index.upsert("items", ids, vectors)
    order, _ = brute_force_top(vectors, vectors[3], 40)
    excluded = [ids[i] for i in order[:5]]
    hits = index.search("items", vectors[3], limit=5, exclude_ids=excluded)
    assert [h[0] for h in hits] == [ids[i] for i in order[5:10]]

    found = index.retrieve_vectors("items", ["3", "17", "missing"])
    assert set(found) == {"3", "17"}
    np.testing.assert_allclose(found["3"], vectors[3] / np.linalg.norm(vectors[3]), rtol=1e-5)


def test_recall_by_user_id_alone(index):
    rng = np.random.default_rng(2)
    items = unit_rows(rng, 100, 8)
    users = unit_rows(rng, 5, 8)
    index.ensure_collection("items", dim=8)
    index.ensure_collection("users", dim=8)
    index.upsert("items", [f"i{i}" for i in range(100)], items)
    index.upsert("users", [f"u{i}" for i in range(5)], users, kind="user")
    for u in range(5):
        order, _ = brute_force_top(items, users[u], 10)
        hits = index.search_by_point_id("items", "users", f"u{u}", limit=10)
        assert [h[0] for h in hits] == [f"i{i}" for i in order]
    hits = index.search_by_point_id("items", "users", "u0", limit=3,
                                    exclude_ids=[f"i{brute_force_top(items, users[0], 1)[0][0]}"])
    assert [h[0] for h in hits] == [f"i{i}" for i in brute_force_top(items, users[0], 4)[0][1:]]
    with pytest.raises(KeyError, match="nobody"):
        index.search_by_point_id("items", "users", "nobody", limit=3)


def test_point_ids_are_deterministic_and_kind_specific():
    assert point_id("7") == point_id("7") == str(uuid.UUID(point_id("7")))
    assert point_id("7") != point_id("7", kind="user") != point_id("8")


def fill_version(index, name, version, n=30, dim=4):
    rng = np.random.default_rng(version)
    index.ensure_collection(name, dim=dim)
    index.upsert(name, [str(i) for i in range(n)], rng.normal(size=(n, dim)),
                 [{"version": version}] * n)


def test_alias_swap_is_atomic_for_readers(index):
    fill_version(index, "items_v1", 1)
    fill_version(index, "items_v2", 2)
    assert index.swap_alias("items", "items_v1") is None
    assert index.resolve("items") == "items_v1" and index.resolve("items_v2") == "items_v2"
    index.ensure_collection("items", dim=4)  # the alias counts as existing: nothing created
    assert index.aliases() == {"items": "items_v1"}

    seen, errors, done, enough = [], [], threading.Event(), threading.Event()

    def reader():
        try:
            while not done.is_set():
                versions = {h[2]["version"] for h in index.search("items", [1, 0, 0, 0], limit=30)}
                seen.append(versions)
                if len(seen) >= 100:
                    enough.set()
        except Exception as error:  # surfaced below
            errors.append(error)
        finally:
            enough.set()  # a reader that failed ends the swapping too

    thread = threading.Thread(target=reader, name="alias-reader")
    thread.start()
    deadline = time.monotonic() + 120  # a bound on the loop; the test normally takes < 1 s
    try:
        i = 0
        while i < 200 or not enough.is_set() or i % 2:  # swap until many queries ran in between
            if time.monotonic() > deadline:
                pytest.fail(f"the reader ran {len(seen)} of 100 queries while {i} swaps "
                            f"took 120 s (reader alive: {thread.is_alive()})")
            previous = index.swap_alias("items", "items_v2" if i % 2 == 0 else "items_v1")
            assert previous == ("items_v1" if i % 2 == 0 else "items_v2")
            i += 1
    finally:
        done.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), "the reader did not stop within 60 s of being told to"
    assert not errors, errors
    assert len(seen) >= 100
    assert {1} in seen and {2} in seen  # the readers saw both sides of the swaps ...
    assert all(versions in ({1}, {2}) for versions in seen)  # ... never mixed, never missing
    assert index.resolve("items") == "items_v1"


K = 10


def fill_pair(index, version, n=40, dim=8):
    """items_vN and users_vN: user "u"'s vector is item i{N % n}'s, so through a matching
    pair of collections the top hit is that item with score 1; through a mixed pair it is not."""
    rng = np.random.default_rng(version)
    items = unit_rows(rng, n, dim)
    index.ensure_collection(f"items_v{version}", dim=dim)
    index.ensure_collection(f"users_v{version}", dim=dim)
    index.upsert(f"items_v{version}", [f"i{i}" for i in range(n)], items,
                 [{"version": version}] * n)
    index.upsert(f"users_v{version}", ["u"], items[version % n:version % n + 1],
                 [{"version": version}], kind="user")


def test_swap_aliases_switches_several_aliases_together_for_readers(index):
    fill_pair(index, 1)
    assert index.swap_aliases({"items": "items_v1", "users": "users_v1"}) == {
        "items": None, "users": None}
    seen, errors, done = [], [], threading.Event()
    progress = threading.Condition()

    def reader():
        try:
            while not done.is_set():
                hits = index.search_by_point_id("items", "users", "u", limit=K)
                versions = {h[2]["version"] for h in hits}
                assert len(hits) == K, f"{len(hits)} hits"
                assert len(versions) == 1, f"items of versions {versions} in one answer"
                version = versions.pop()
                # the user vector came from the users collection of the same version
                assert hits[0][0] == f"i{version % 40}" and hits[0][1] > 0.9999, hits[0]
                with progress:
                    seen.append(version)
                    progress.notify_all()
        except BaseException as error:  # surfaced below
            errors.append(error)
            with progress:
                progress.notify_all()

    thread = threading.Thread(target=reader, name="aliases-reader")
    thread.start()
    try:
        for version in range(2, 9):
            fill_pair(index, version)  # created and filled while readers use the old pair
            previous = index.swap_aliases({"items": f"items_v{version}",
                                           "users": f"users_v{version}"})
            assert previous == {"items": f"items_v{version - 1}", "users": f"users_v{version - 1}"}
            index.delete_collection(previous["items"])  # readers are on the new pair now
            index.delete_collection(previous["users"])
            with progress:  # let the reader query the new pair a few times
                count = len(seen)
                assert progress.wait_for(lambda: len(seen) >= count + 3 or errors, timeout=60)
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors, errors
    assert set(seen) >= set(range(2, 9))  # every pair served readers
    assert seen == sorted(seen)  # never back to an older pair
    assert index.aliases() == {"items": "items_v8", "users": "users_v8"}
    assert not index.exists("items_v7") and not index.exists("users_v1")


def test_swap_aliases_is_one_alias_request(index, monkeypatch):
    # what makes the switch atomic on a server, where no lock of ours holds readers back
    fill_pair(index, 1)
    fill_pair(index, 2)
    index.swap_aliases({"items": "items_v1", "users": "users_v1"})
    requests = []
    send = index.client.update_collection_aliases
    monkeypatch.setattr(index.client, "update_collection_aliases",
                        lambda **kw: requests.append(kw["change_aliases_operations"]) or send(**kw))
    index.swap_aliases({"items": "items_v2", "users": "users_v2"})
    assert len(requests) == 1
    assert [type(a).__name__ for a in requests[0]] == [
        "DeleteAliasOperation", "CreateAliasOperation"] * 2
    assert index.aliases() == {"items": "items_v2", "users": "users_v2"}


def test_swap_aliases_rejects_bad_targets_and_switches_nothing(index):
    fill_pair(index, 1)
    fill_pair(index, 2)
    index.swap_aliases({"items": "items_v1", "users": "users_v1"})
    with pytest.raises(ValueError, match="at least one"):
        index.swap_aliases({})
    with pytest.raises(ValueError, match="'items_v9' is not a collection"):
        index.swap_aliases({"items": "items_v2", "users": "items_v9"})
    with pytest.raises(ValueError, match="'users' is not a collection"):
        index.swap_aliases({"items": "users"})  # an alias, not a collection
    with pytest.raises(ValueError, match="a collection has that name"):
        index.swap_aliases({"items_v1": "items_v2"})
    assert index.aliases() == {"items": "items_v1", "users": "users_v1"}
    assert index.swap_alias("items", "items_v2") == "items_v1"


def test_collection_metadata_is_merged_and_read_through_aliases(index):
    index.ensure_collection("items_v1", dim=4)
    assert index.metadata("items_v1") == {}
    index.swap_alias("items", "items_v1")
    index.update_metadata("items", {"catalog": {"version": 3}, "note": "a"})
    index.update_metadata("items_v1", {"catalog": {"version": 4}})
    assert index.metadata("items") == index.metadata("items_v1") == {
        "catalog": {"version": 4}, "note": "a"}
    with pytest.raises(ValueError, match="not found"):
        index.metadata("nothing")


def test_a_restart_keeps_collections_aliases_points_and_metadata(tmp_path):
    path = location("edge", tmp_path / "qdrant")
    first = VectorIndex.connect(path)
    for version in (1, 2):
        fill_pair(first, version)
        first.swap_aliases({"items": f"items_v{version}", "users": f"users_v{version}"})
    first.delete_collection("items_v1")
    first.delete_collection("users_v1")
    first.update_metadata("items", {"catalog": {"version": 2}})
    before = first.search_by_point_id("items", "users", "u", limit=K)
    first.close()

    second = VectorIndex.connect(path)
    try:
        assert second.aliases() == {"items": "items_v2", "users": "users_v2"}
        assert not second.exists("items_v1") and not second.exists("users_v1")
        assert second.count("items") == 40 and second.count("users") == 1
        assert second.metadata("items") == {"catalog": {"version": 2}}
        after = second.search_by_point_id("items", "users", "u", limit=K)
        assert [(h[0], h[2]) for h in after] == [(h[0], h[2]) for h in before]
        fill_pair(second, 3)  # and it goes on working: a swap after the restart
        assert second.swap_aliases({"items": "items_v3", "users": "users_v3"})["items"] == "items_v2"
    finally:
        second.close()
    third = VectorIndex.connect(path)
    try:
        assert third.resolve("items") == "items_v3" and third.resolve("users") == "users_v3"
    finally:
        third.close()


def test_an_edge_folder_has_one_client_at_a_time(tmp_path):
    from recallstream.model.edge_index import FolderInUse

    path = location("edge", tmp_path / "qdrant")
    first = VectorIndex.connect(path)
    with pytest.raises(FolderInUse, match="open in another client"):
        VectorIndex.connect(path)
    first.close()
    VectorIndex.connect(path).close()  # released by close


def test_an_edge_folder_left_by_a_crash_mid_delete_opens_clean(tmp_path):
    path = location("edge", tmp_path / "qdrant")
    first = VectorIndex.connect(path)
    fill_pair(first, 1)
    first.swap_aliases({"items": "items_v1", "users": "users_v1"})
    first.close()
    # a crash after the collection's record was removed, before its files and aliases were
    (tmp_path / "qdrant" / "collections" / "items_v1.json").unlink()
    second = VectorIndex.connect(path)
    try:
        assert second.aliases() == {"users": "users_v1"}  # the dangling alias is dropped
        assert not second.exists("items_v1") and not second.exists("items")
        assert not (tmp_path / "qdrant" / "collections" / "items_v1").exists()  # files removed
        fill_pair(second, 1)  # the name is free again: the leftover files are replaced
        assert second.count("items_v1") == 40
    finally:
        second.close()


@pytest.mark.parametrize("backend", ["path", "edge"])
def test_local_path_persists_points_and_aliases(tmp_path, backend):
    path = location(backend, tmp_path / "qdrant")
    first = VectorIndex.connect(path)
    fill_version(first, "items_v1", 1)
    first.swap_alias("items", "items_v1")
    before = first.search("items", [0, 1, 0, 0], limit=5)
    first.close()

    second = VectorIndex.connect(path)
    try:
        assert second.count("items") == 30
        after = second.search("items", [0, 1, 0, 0], limit=5)
        assert [(h[0], h[2]) for h in after] == [(h[0], h[2]) for h in before]
        np.testing.assert_allclose([h[1] for h in after], [h[1] for h in before], rtol=1e-6)
        assert second.aliases() == {"items": "items_v1"}
    finally:
        second.close()


@pytest.mark.parametrize("backend", ["path", "edge"])
def test_a_restart_serves_recall_by_user_id_without_re_embedding(tmp_path, backend):
    path = location(backend, tmp_path / "qdrant")
    rng = np.random.default_rng(3)
    items, users = unit_rows(rng, 200, 8), unit_rows(rng, 3, 8)
    first = VectorIndex.connect(path)
    first.ensure_collection("items_v1", dim=8)
    first.swap_alias("items", "items_v1")
    first.ensure_collection("users", dim=8)
    first.upsert("items", [f"i{i}" for i in range(200)], items,
                 [{"categories": ["even" if i % 2 == 0 else "odd"]} for i in range(200)])
    first.upsert("users", ["u0", "u1", "u2"], users, kind="user")
    first.close()

    second = VectorIndex.connect(path)  # nothing written to it: what the first left serves
    try:
        for u in range(3):
            hits = second.search_by_point_id("items", "users", f"u{u}", limit=10)
            assert [h[0] for h in hits] == [f"i{i}" for i in brute_force_top(items, users[u], 10)[0]]
        odd = second.search_by_point_id("items", "users", "u0", limit=20, categories=["odd"])
        assert len(odd) == 20 and all(h[2]["categories"] == ["odd"] for h in odd)
        with pytest.raises(KeyError):
            second.search_by_point_id("items", "users", "nobody", limit=3)
    finally:
        second.close()


def test_bad_arguments_raise_value_error(index):
    index.ensure_collection("items", dim=4)
    with pytest.raises(ValueError, match="dim"):
        index.ensure_collection("items", dim=8)
    with pytest.raises(ValueError, match="distance"):
        index.ensure_collection("other", dim=4, distance="manhattan")
    with pytest.raises(ValueError, match="finite"):
        index.upsert("items", ["a"], np.array([[np.nan, 0, 0, 0]]))
    with pytest.raises(ValueError, match="shape"):
        index.upsert("items", ["a", "b"], np.zeros((3, 4)))
    with pytest.raises(ValueError, match="limit"):
        index.search("items", [1, 0, 0, 0], limit=0)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_server_unavailable_is_retried_with_backoff_then_raised():
    waits = []
    index = VectorIndex.connect(f"http://127.0.0.1:{closed_port()}",
                                retry=RetryPolicy(attempts=4, initial_s=0.01, max_s=0.03),
                                sleep=waits.append)
    with pytest.raises(Exception) as caught:
        index.count("items")
    assert waits == [0.01, 0.02, 0.03]
    assert "connect" in repr(caught.value).lower()
    # what the worker's writer then does with it: keep the vectors and try again later
    from recallstream.model.index_sync import is_retryable

    assert is_retryable(caught.value)


@pytest.mark.parametrize("backend", EMBEDDED)
def test_errors_that_are_not_connection_errors_are_not_retried(tmp_path, backend):
    waits = []
    index = VectorIndex.connect(location(backend, tmp_path / "qdrant"), sleep=waits.append)
    with pytest.raises(ValueError, match="not found"):
        index.count("no-such-collection")
    assert waits == []


@pytest.mark.skipif(not os.environ.get("QDRANT_URL", "").startswith("http"),
                    reason="needs a Qdrant server: set QDRANT_URL (and QDRANT_API_KEY if required); "
                           "Docker is not available on this machine")
def test_against_a_qdrant_server():
    index = VectorIndex.connect(os.environ["QDRANT_URL"], os.environ.get("QDRANT_API_KEY"))
    suffix = uuid.uuid4().hex[:8]
    names = [f"test_items_{suffix}", f"test_v1_{suffix}", f"test_v2_{suffix}", f"test_users_{suffix}"]
    alias = f"test_alias_{suffix}"
    try:
        check_roundtrip(index, names[0])
        fill_version(index, names[1], 1)
        fill_version(index, names[2], 2)
        index.swap_alias(alias, names[1])
        assert index.swap_alias(alias, names[2]) == names[1]
        assert {h[2]["version"] for h in index.search(alias, [1, 0, 0, 0], limit=30)} == {2}
        index.ensure_collection(names[3], dim=4)
        index.upsert(names[3], ["u"], np.array([[1.0, 0, 0, 0]]), kind="user")
        hits = index.search_by_point_id(names[2], names[3], "u", limit=3)
        assert [h[0] for h in hits] == [h[0] for h in index.search(names[2], [1, 0, 0, 0], limit=3)]
        with pytest.raises(KeyError):
            index.search_by_point_id(names[2], names[3], "nobody", limit=3)
    finally:
        for name in names:
            index.delete_collection(name)
        index.close()


def random_payload(rng, static: dict) -> dict:
    """An item-like payload: mostly its static part and new per-write values, sometimes
    a key less, a list changed, a value of another type but equal, or a long list."""
    payload = {**static, "model_version": int(rng.integers(3)), "updated_at": float(rng.integers(3))}
    draw = rng.random()
    if draw < 0.1:
        del payload["title"]
    elif draw < 0.2:
        payload["categories"] = ["Drama", "War"]
    elif draw < 0.35:
        payload["model_version"] = [1, 1.0, True][rng.integers(3)]  # == 1, not the same value
    elif draw < 0.4:
        payload["history"] = [str(i) for i in range(20)]  # too long to remember
    return payload


def typed(value):
    """``value`` with the type of each of its parts: 1, 1.0 and True are three values."""
    if isinstance(value, dict):
        return {key: typed(v) for key, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return type(value).__name__, value


def test_random_upserts_and_deletes_leave_what_whole_point_writes_would(index):
    # The reference is the plain meaning of an upsert: each point replaced whole.
    rng = np.random.default_rng(5)
    index.ensure_collection("items", dim=4)
    items = [f"i{k}" for k in range(12)]
    static = {item: {"categories": ["Drama"], "title": f"Film {item}"} for item in items}
    expected: dict[str, tuple[np.ndarray, dict]] = {}
    for _ in range(100):
        chosen = sorted(map(str, rng.choice(items, size=int(rng.integers(1, 8)), replace=False)))
        if rng.random() < 0.15:
            index.delete("items", chosen)
            for item in chosen:
                expected.pop(item, None)
        else:
            vectors = unit_rows(rng, len(chosen), 4)
            payloads = [random_payload(rng, static[item]) for item in chosen]
            index.upsert("items", chosen, vectors, payloads)
            expected.update({item: (vector, {**payload, "item_id": item})
                             for item, vector, payload in zip(chosen, vectors, payloads)})
        stored = index.retrieve_payloads("items", items)
        assert typed(stored) == typed({item: payload for item, (_, payload) in expected.items()})
        vectors = index.retrieve_vectors("items", items)
        assert vectors.keys() == expected.keys()
        for item, (vector, _) in expected.items():
            np.testing.assert_allclose(vectors[item], vector, atol=1e-6)


def test_edge_writes_only_the_changed_values_of_a_known_point(tmp_path, monkeypatch):
    from recallstream.model import edge_index

    index = VectorIndex.connect(location("edge", tmp_path / "qdrant"))
    index.ensure_collection("items", dim=2)
    operations = []
    real = edge_index.EdgeClient._edge.fget(index.client)

    class Recording:  # the binding's UpdateOperation, noting each kind of operation built
        def __getattr__(self, kind):
            def build(*args, **kwargs):
                operations.append((kind, args))
                return getattr(real.UpdateOperation, kind)(*args, **kwargs)
            return build

    monkeypatch.setattr(edge_index.EdgeClient, "_edge", property(
        lambda self: type("Edge", (), {"UpdateOperation": Recording(), "Point": real.Point,
                                       "PointVectors": real.PointVectors})))
    payload = {"model_version": 1, "categories": ["Drama"], "title": "Heat"}
    index.upsert("items", ["a", "b"], np.eye(2), [payload, payload])
    assert [kind for kind, _ in operations] == ["upsert_points"]
    operations.clear()
    index.upsert("items", ["a", "b"], np.eye(2)[::-1], [{**payload, "model_version": 2}] * 2)
    assert [kind for kind, _ in operations] == ["update_vectors", "set_payload"]
    assert operations[1][1][1] == {"model_version": 2}  # one request for both points
    assert index.retrieve_payloads("items", ["a"])["a"] == {**payload, "model_version": 2,
                                                           "item_id": "a"}
    np.testing.assert_allclose(index.retrieve_vectors("items", ["a"])["a"], [0.0, 1.0], atol=1e-6)
    index.close()


def test_edge_remembers_a_copy_of_what_it_wrote(tmp_path):
    # A caller that changes a payload's list after the write must not make the next
    # write look unchanged: Qdrant still holds the old list.
    index = VectorIndex.connect(location("edge", tmp_path / "qdrant"))
    index.ensure_collection("items", dim=2)
    genres = ["Drama"]
    index.client.upsert("items", batch_of(["a"], [[1.0, 0.0]], [{"categories": genres}]))
    genres.append("War")
    index.client.upsert("items", batch_of(["a"], [[1.0, 0.0]], [{"categories": genres}]))
    stored = index.client.retrieve("items", [point_id("a")], with_payload=True)[0].payload
    assert stored == {"categories": ["Drama", "War"]}
    index.close()


def batch_of(ids, vectors, payloads):
    from qdrant_client import models

    return models.Batch(ids=[point_id(i) for i in ids], vectors=vectors, payloads=payloads)
