"""exponea.catalog against FakeExponea: the seed examples, item listing, path escaping."""

from __future__ import annotations

import pytest
from conftest import TOKEN

from tracker_agent.exceptions import BadRequestError, NotFoundError, ValidationError

CATALOGS = f"/data/v2/projects/{TOKEN}/catalogs"


@pytest.fixture
def catalog_id(exponea):
    return exponea.catalog.create_catalog("test_catalog", ["field_one", "field_two"])


def test_seed_create_catalog_returns_its_id(exponea, fake):
    catalog_id = exponea.catalog.create_catalog("catalog_name", ["field_one", "field_two"])
    assert isinstance(catalog_id, str) and catalog_id
    assert fake.catalogs[catalog_id]["fields"] == ["field_one", "field_two"]
    assert fake.requests[0].json == {
        "name": "catalog_name",
        "fields": [{"name": "field_one"}, {"name": "field_two"}],
    }


def test_seed_get_catalog_name_returns_the_name(exponea, catalog_id):
    assert exponea.catalog.get_catalog_name(catalog_id) == "test_catalog"


def test_seed_get_catalog_items_returns_the_listing_without_success(exponea, fake, catalog_id):
    exponea.catalog.create_catalog_item(catalog_id, "1", {"field_one": "foo", "field_two": "baz"})
    exponea.catalog.create_catalog_item(catalog_id, "2", {"field_one": "bar", "field_two": "qux"})
    result = exponea.catalog.get_catalog_items(catalog_id, params={"query": "foo"})
    assert result == {
        "matched": 1,
        "limit": 20,
        "skip": 0,
        "data": [{"item_id": "1", "properties": {"field_one": "foo", "field_two": "baz"}}],
        "matched_limited": False,
        "total": 2,
    }
    assert fake.requests[-1].query == "query=foo"


def test_get_catalog_items_without_params_sends_no_query(exponea, fake, catalog_id):
    assert exponea.catalog.get_catalog_items(catalog_id)["data"] == []
    assert fake.requests[-1].query == ""


def test_get_catalog_items_tolerates_items_without_catalog_id(exponea, fake):
    fake.fail_next(
        status=200,
        body={
            "success": True,
            "matched": 1,
            "limit": 20,
            "skip": 0,
            "total": 1,
            "matched_limited": False,
            "data": [{"item_id": "1", "properties": {"a": 1}}],
        },
    )
    assert exponea.catalog.get_catalog_items("any")["data"] == [
        {"item_id": "1", "properties": {"a": 1}}
    ]


def test_seed_update_catalog_name_returns_true(exponea, fake, catalog_id):
    assert (
        exponea.catalog.update_catalog_name(
            catalog_id, "new_name", ["field_one", "field_two", "field_three"]
        )
        is True
    )
    assert fake.catalogs[catalog_id]["name"] == "new_name"
    assert fake.catalogs[catalog_id]["fields"] == ["field_one", "field_two", "field_three"]


def test_update_catalog_name_dropping_a_field_is_a_bad_request(exponea, catalog_id):
    with pytest.raises(BadRequestError):
        exponea.catalog.update_catalog_name(catalog_id, "new_name", ["field_one"])


def test_seed_create_catalog_item_replaces_an_existing_item(exponea, fake, catalog_id):
    assert (
        exponea.catalog.create_catalog_item(
            catalog_id, "item_id", {"field_one": "value_one", "field_two": "x"}
        )
        is True
    )
    assert (
        exponea.catalog.create_catalog_item(catalog_id, "item_id", {"field_one": "value_one"})
        is True
    )
    assert fake.catalogs[catalog_id]["items"] == {"item_id": {"field_one": "value_one"}}


def test_seed_update_catalog_item_changes_only_given_fields(exponea, fake, catalog_id):
    exponea.catalog.create_catalog_item(catalog_id, "1", {"field_one": "a", "field_two": "b"})
    assert exponea.catalog.update_catalog_item(catalog_id, "1", {"field_one": "new_value"}) is True
    assert fake.catalogs[catalog_id]["items"]["1"] == {"field_one": "new_value", "field_two": "b"}
    assert fake.requests[-1].path == f"{CATALOGS}/{catalog_id}/items/1/partial-update"


def test_seed_delete_catalog_item_returns_true(exponea, fake, catalog_id):
    exponea.catalog.create_catalog_item(catalog_id, "item_id", {"field_one": "v"})
    assert exponea.catalog.delete_catalog_item(catalog_id, "item_id") is True
    assert fake.catalogs[catalog_id]["items"] == {}


def test_seed_delete_catalog_items_empties_the_catalog(exponea, fake, catalog_id):
    exponea.catalog.create_catalog_item(catalog_id, "1", {"field_one": "v"})
    exponea.catalog.create_catalog_item(catalog_id, "2", {"field_one": "w"})
    assert exponea.catalog.delete_catalog_items(catalog_id) is True
    assert fake.catalogs[catalog_id]["items"] == {}


def test_seed_delete_catalog_returns_true(exponea, fake, catalog_id):
    assert exponea.catalog.delete_catalog(catalog_id) is True
    assert fake.catalogs == {}
    with pytest.raises(NotFoundError):
        exponea.catalog.get_catalog_name(catalog_id)


def test_ids_are_escaped_into_one_path_segment(exponea, fake, catalog_id):
    exponea.catalog.create_catalog_item(catalog_id, "a/b c", {"field_one": 1})
    assert fake.requests[-1].path == f"{CATALOGS}/{catalog_id}/items/a%2Fb%20c"
    assert fake.catalogs[catalog_id]["items"] == {"a/b c": {"field_one": 1}}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.create_catalog("", ["f"]), "catalog_name"),
        (lambda c: c.create_catalog("n", []), "fields"),
        (lambda c: c.create_catalog("n", "field_one"), "fields"),
        (lambda c: c.get_catalog_name(None), "catalog_id"),
        (lambda c: c.get_catalog_items("c", params=[("a", 1)]), "params"),
        (lambda c: c.create_catalog_item("c", "", {"f": 1}), "item_id"),
        (lambda c: c.create_catalog_item("c", "i", {"f": float("nan")}), "properties['f']"),
        (lambda c: c.update_catalog_item("c", "i", None), "properties"),
        (lambda c: c.delete_catalog(""), "catalog_id"),
    ],
)
def test_bad_catalog_input_raises_and_sends_nothing(exponea, fake, call, field):
    with pytest.raises(ValidationError) as info:
        call(exponea.catalog)
    assert info.value.field == field
    assert fake.requests == []
