"""exponea.customer against FakeExponea: the seed examples and read-back of tracked data."""

from __future__ import annotations

import logging

import pytest
from conftest import TOKEN

from tracker_agent.exceptions import InvalidResponseError, NotFoundError, ValidationError

IDS = {"registered": "test", "cookie": "123"}


@pytest.fixture
def lukas(exponea):
    """The seed's customer: two ids, two properties, one event."""
    exponea.tracking.update_customer_properties(IDS, {"first_name": "Lukas", "last_name": "Cerny"})
    exponea.tracking.add_event(IDS, "test", timestamp=1533495544.343536)
    return IDS


def test_seed_get_customer_returns_ids_properties_and_events(exponea, lukas):
    assert exponea.customer.get_customer({"registered": "test", "cookie": "123"}) == {
        "events": [{"type": "test", "timestamp": 1533495544.343536, "properties": {}}],
        "properties": {"first_name": "Lukas", "last_name": "Cerny"},
        "ids": {"registered": "test", "cookie": "123"},
    }


def test_seed_get_customer_consents_returns_a_bool_per_category(exponea, lukas):
    exponea.tracking.add_event(
        {"registered": "test"},
        "consent",
        {"category": "newsletter", "action": "accept"},
        timestamp=100,
    )
    assert exponea.customer.get_customer_consents(
        {"registered": "test"}, ["newsletter", "other"]
    ) == {"newsletter": True, "other": False}


def test_consent_without_permission_is_none_with_a_warning(exponea, fake, lukas, caplog):
    fake.deny_attribute("consent", "other")
    with caplog.at_level(logging.WARNING, logger="tracker_agent"):
        result = exponea.customer.get_customer_consents(IDS, ["newsletter", "other"])
    assert result == {"newsletter": False, "other": None}
    assert "consent 'other'" in caplog.text


def test_seed_get_customer_attributes_returns_each_kind_asked_for(exponea, fake, lukas):
    fake.attribute_values[("id", "ga")] = "sample_id"
    fake.attribute_values[("id", "cookie")] = []
    fake.attribute_values[("aggregate", "agg_id")] = "sample_aggregate"
    fake.attribute_values[("segmentation", "segm_id")] = "sample_segment"
    fake.attribute_values[("prediction", "pred_id")] = "sample_prediction"
    fake.attribute_values[("expression", "expr_id")] = "sample_expression"
    result = exponea.customer.get_customer_attributes(
        {"registered": "test"},
        ids=["cookie", "ga"],
        properties=["first_name"],
        aggregations=["agg_id"],
        segmentations=["segm_id"],
        predictions=["pred_id"],
        expressions=["expr_id"],
    )
    assert result == {
        "ids": {"cookie": [], "ga": "sample_id"},
        "properties": {"first_name": "Lukas"},
        "aggregations": {"agg_id": "sample_aggregate"},
        "segmentations": {"segm_id": "sample_segment"},
        "predictions": {"pred_id": "sample_prediction"},
        "expressions": {"expr_id": "sample_expression"},
    }


def test_attribute_kinds_not_asked_for_are_absent(exponea, fake, lukas):
    assert exponea.customer.get_customer_attributes(IDS, properties=["last_name"]) == {
        "properties": {"last_name": "Cerny"}
    }
    attributes = fake.requests[-1].json["attributes"]
    assert attributes == [{"type": "property", "property": "last_name"}]


def test_denied_attribute_is_none(exponea, fake, lukas):
    fake.deny_attribute("segmentation", "secret_segment")
    result = exponea.customer.get_customer_attributes(
        IDS, segmentations=["secret_segment"], properties=["first_name"]
    )
    assert result == {
        "properties": {"first_name": "Lukas"},
        "segmentations": {"secret_segment": None},
    }


def test_seed_get_customers_returns_ids_and_properties_of_everyone(exponea, lukas):
    assert exponea.customer.get_customers() == [
        {
            "ids": {"cookie": "123", "registered": "test"},
            "properties": {"first_name": "Lukas", "last_name": "Cerny"},
        }
    ]


def test_get_customers_parses_the_seed_export_shape(exponea, fake):
    fake.fail_next(
        status=200,
        body={
            "success": True,
            "fields": [
                {"id": "registered", "type": "id"},
                {"id": "cookie", "type": "id"},
                {"property": "first_name", "type": "property"},
                {"property": "last_name", "type": "property"},
            ],
            "data": [["test", ["cookie"], "Lukas", "Cerny"]],
        },
    )
    assert exponea.customer.get_customers() == [
        {
            "ids": {"registered": "test", "cookie": ["cookie"]},
            "properties": {"first_name": "Lukas", "last_name": "Cerny"},
        }
    ]
    assert fake.requests[0].json == {"format": "native_json"}


def test_seed_get_events_returns_events_of_the_given_types(exponea, lukas):
    exponea.tracking.add_event(
        {"registered": "test"}, "event_type", {"foo": "baz"}, timestamp=1533495529.9268496
    )
    # Timestamps are kept to 6 decimals (the API's precision), so ...9268496 is sent as ...92685.
    assert exponea.customer.get_events({"registered": "test"}, ["event_type"]) == [
        {"properties": {"foo": "baz"}, "timestamp": 1533495529.92685, "type": "event_type"}
    ]


def test_seed_anonymize_customer_returns_true(exponea, lukas):
    assert exponea.customer.anonymize_customer({"registered": "test"}) is True
    with pytest.raises(NotFoundError):
        exponea.customer.get_customer({"registered": "test"})


def test_unknown_customer_is_not_found(exponea):
    with pytest.raises(NotFoundError) as info:
        exponea.customer.get_customer({"registered": "nobody"})
    assert info.value.path == f"/data/v2/projects/{TOKEN}/customers/export-one"


def test_answer_missing_documented_keys_is_an_invalid_response(exponea, fake):
    fake.fail_next(3, status=200, body={"success": True, "ids": {}})  # reads retry it
    with pytest.raises(InvalidResponseError):
        exponea.customer.get_customer(IDS)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.get_customer({}), "customer_ids"),
        (lambda c: c.get_customer_consents(IDS, "newsletter"), "consent_types"),
        (lambda c: c.get_customer_consents(IDS, [""]), "consent_types[0]"),
        (lambda c: c.get_customer_attributes(IDS, properties=[1]), "properties[0]"),
        (lambda c: c.get_events({"registered": None}, ["e"]), "customer_ids['registered']"),
        (lambda c: c.get_events(IDS, None), "event_types"),
        (lambda c: c.anonymize_customer("test"), "customer_ids"),
    ],
)
def test_bad_customer_input_raises_and_sends_nothing(exponea, fake, call, field):
    with pytest.raises(ValidationError) as info:
        call(exponea.customer)
    assert info.value.field == field
    assert fake.requests == []
