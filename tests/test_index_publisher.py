"""IndexPublisher's Qdrant payload: an item's genres become its ``categories`` whatever
shape the producer gave them (issue 15: a genre given as a string was split into characters)."""

import pytest

from recallstream.consumers.index_publisher import IndexPublisher
from recallstream.model.index_sync import IndexSync
from recallstream.model.online import OnlineLearner
from recallstream.model.towers import movielens_config
from recallstream.model.vector_index import VectorIndex
from recallstream.streaming.entity_tables import EntityTables, categories
from recallstream.streaming.events import EntityRecord


@pytest.mark.parametrize("genres, expected", [
    ("Drama", ["Drama"]),
    (["Drama", "Comedy"], ["Drama", "Comedy"]),
    (("Drama",), ["Drama"]),
    ([], []), (None, []), ("", []),
    ([7, "Drama", 1.5], ["7", "Drama", "1.5"]),
    ([None, True, {"a": 1}, ["nested"], "", "Drama"], ["Drama"]),
    (42, ["42"]), (True, []), ({"Drama": 1}, []),
])
def test_categories_of_every_shape(genres, expected):
    assert categories(genres) == expected


def test_published_items_carry_a_string_genre_as_one_category():
    learner = OnlineLearner(movielens_config(id_buckets=64, output_dim=4, hidden=(8,)), seed=0)
    tables = EntityTables()
    changes = tables.apply([
        EntityRecord("items", "one", 1.0, {"genres": "Drama"}),
        EntityRecord("items", "many", 1.0, {"genres": ["Drama", "Comedy"]}),
        EntityRecord("items", "odd", 1.0, {"genres": {"Drama": True}}),
        EntityRecord("items", "none", 1.0, {}),
    ])
    index = VectorIndex.connect(":memory:")
    publisher = IndexPublisher(IndexSync(index, items="items", users="users", dim=4),
                               learner, tables, reembed_every_batches=20)
    try:
        publisher.catalog_changed(changes, version=0)
        publisher.drain()
        payloads = index.retrieve_payloads("items", ["one", "many", "odd", "none"])
        assert {item: p["categories"] for item, p in payloads.items()} == {
            "one": ["Drama"], "many": ["Drama", "Comedy"], "odd": [], "none": []}
        # and the category filter of recall finds the string-genre item
        found = {hit[0] for hit in index.search("items", [1.0, 0, 0, 0], limit=10,
                                                categories=["Drama"])}
        assert found == {"one", "many"}
    finally:
        publisher.close()
        index.close()
