"""A test suite in exponea-python-sdk's own style, run against tracker-agent: each test patches
`requests.request` with a minimal fake (an object with status_code and text, HTTP 200 even
for errors, as the original's tests did) and checks the return values the original documents.

The only change for tracker-agent is the import of `route_requests_request` below: the
one-line change "Porting your tests" in README.md asks for. tests/test_porting.py runs this
file without that line and checks that every test making a request then fails fast with
PatchedRequestsError, without opening a connection.
"""

import json
from contextlib import ExitStack
from types import SimpleNamespace
from unittest import mock

import pytest

from tracker_agent import APIException, Exponea
from tracker_agent.testing.porting import route_requests_request  # noqa: F401

# --- what the original suite's conftest.py provided -------------------------------------


@pytest.fixture
def mocker():
    """The part of pytest-mock's `mocker` these tests use (pytest-mock is not a dependency)."""
    with ExitStack() as stack:

        def patch(target, new):
            return stack.enter_context(mock.patch(target, new))

        yield SimpleNamespace(patch=patch)


@pytest.fixture
def mock_request():
    """A stand-in for requests.request answering `data` as JSON with HTTP 200."""

    class MinimalResponse:
        def __init__(self, data):
            self.status_code = 200
            self.text = json.dumps(data)

    def make(data):
        return lambda *args, **kwargs: MinimalResponse(data)

    return make


# --- tracking ---------------------------------------------------------------------------


def test_get_system_time(mocker, mock_request):
    exponea = Exponea("test")
    mocker.patch("requests.request", mock_request({"success": True, "time": 1533663283.8943756}))
    assert exponea.tracking.get_system_time() == 1533663283.8943756


def test_update_customer_properties(mocker, mock_request):
    exponea = Exponea("test")
    mocker.patch("requests.request", mock_request({"success": True, "errors": []}))
    response = exponea.tracking.update_customer_properties(
        {"registered": "test"}, {"first_name": "Lukas"}
    )
    assert response is True


def test_add_event(mocker, mock_request):
    exponea = Exponea("test")
    mocker.patch("requests.request", mock_request({"success": True, "errors": []}))
    response = exponea.tracking.add_event(
        {"registered": "test"},
        "event_type",
        properties={"property": "sample_property"},
        timestamp=1533663283,
    )
    assert response is True


def test_batch_commands(mocker, mock_request):
    exponea = Exponea("test")
    answer = {
        "success": True,
        "start_time": 1533833512.6,
        "end_time": 1533833512.7,
        "results": [
            {"success": True},
            {"success": True},
            {"success": True, "time": 1533833512.6860783},
        ],
    }
    mocker.patch("requests.request", mock_request(answer))
    response = exponea.tracking.batch_commands(
        [
            exponea.tracking.add_event(
                {"registered": "test"}, "event_type", properties={"property": "test"}, batch=True
            ),
            exponea.tracking.update_customer_properties(
                {"registered": "test"}, {"first_name": "Lukas"}, batch=True
            ),
            exponea.tracking.get_system_time(batch=True),
        ]
    )
    assert response == [True, True, 1533833512.6860783]


def test_batch_builders_return_the_original_commands():
    exponea = Exponea("test")
    event = exponea.tracking.add_event({"registered": "test"}, "event_type", batch=True)
    assert event == {
        "name": "customers/events",
        "data": {
            "customer_ids": {"registered": "test"},
            "timestamp": None,
            "properties": None,
            "event_type": "event_type",
        },
    }
    assert exponea.tracking.update_customer_properties(
        {"registered": "test"}, {"first_name": "Lukas"}, batch=True
    ) == {
        "name": "customers",
        "data": {"customer_ids": {"registered": "test"}, "properties": {"first_name": "Lukas"}},
    }
    assert exponea.tracking.get_system_time(batch=True) == {"name": "system/time"}


# --- customer ---------------------------------------------------------------------------


def test_get_customer(mocker, mock_request):
    exponea = Exponea("test")
    customer = {
        "events": [{"type": "test", "timestamp": 1533495544.343536, "properties": {}}],
        "properties": {"first_name": "Lukas", "last_nam": "Cerny"},
        "ids": {"registered": "test", "cookie": "123"},
    }
    mocker.patch("requests.request", mock_request({"success": True, **customer}))
    assert exponea.customer.get_customer({"registered": "test", "cookie": "123"}) == customer


def test_get_customer_consents(mocker, mock_request):
    exponea = Exponea("test")
    answer = {
        "success": True,
        "results": [{"success": True, "value": True}, {"success": True, "value": False}],
    }
    mocker.patch("requests.request", mock_request(answer))
    consents = exponea.customer.get_customer_consents(
        {"registered": "test"}, ["newsletter", "other"]
    )
    assert consents == {"newsletter": True, "other": False}


def test_get_customer_attributes(mocker, mock_request):
    exponea = Exponea("test")
    values = ["Lukas", "sample_segment", [], "sample_id", "sample_expression"]
    values += ["sample_aggregate", "sample_prediction"]
    answer = {"success": True, "results": [{"success": True, "value": v} for v in values]}
    mocker.patch("requests.request", mock_request(answer))
    attributes = exponea.customer.get_customer_attributes(
        {"registered": "test"},
        ids=["cookie", "ga"],
        properties=["first_name"],
        aggregations=["agg_id"],
        segmentations=["segm_id"],
        predictions=["pred_id"],
        expressions=["expr_id"],
    )
    assert attributes == {
        "ids": {"cookie": [], "ga": "sample_id"},
        "properties": {"first_name": "Lukas"},
        "aggregations": {"agg_id": "sample_aggregate"},
        "segmentations": {"segm_id": "sample_segment"},
        "predictions": {"pred_id": "sample_prediction"},
        "expressions": {"expr_id": "sample_expression"},
    }


def test_get_customers(mocker, mock_request):
    exponea = Exponea("test")
    answer = {
        "success": True,
        "fields": [
            {"type": "id", "id": "cookie"},
            {"type": "id", "id": "registered"},
            {"type": "property", "property": "first_name"},
            {"type": "property", "property": "last_name"},
        ],
        "data": [[[], "test", "Lukas", "Cerny"]],
    }
    mocker.patch("requests.request", mock_request(answer))
    assert exponea.customer.get_customers() == [
        {
            "ids": {"cookie": [], "registered": "test"},
            "properties": {"first_name": "Lukas", "last_name": "Cerny"},
        }
    ]


def test_get_events(mocker, mock_request):
    exponea = Exponea("test")
    events = [{"properties": {"foo": "baz"}, "timestamp": 1533495529.9268496, "type": "event_type"}]
    mocker.patch("requests.request", mock_request({"success": True, "data": events}))
    assert exponea.customer.get_events({"registered": "test"}, ["event_type"]) == events


def test_anonymize_customer(mocker, mock_request):
    exponea = Exponea("test")
    mocker.patch("requests.request", mock_request({"success": True}))
    assert exponea.customer.anonymize_customer({"registered": "test"}) is True


# --- catalog ----------------------------------------------------------------------------


def test_create_catalog(mocker, mock_request):
    exponea = Exponea("test")
    mocker.patch(
        "requests.request", mock_request({"success": True, "id": "d2b69e7s987b0asa0137455f2"})
    )
    catalog_id = exponea.catalog.create_catalog("catalog_name", ["field_one", "field_two"])
    assert catalog_id == "d2b69e7s987b0asa0137455f2"


def test_get_catalog_name(mocker, mock_request):
    exponea = Exponea("test")
    answer = {"success": True, "data": {"name": "test_catalog", "fields": [{"name": "field_one"}]}}
    mocker.patch("requests.request", mock_request(answer))
    assert exponea.catalog.get_catalog_name("catalog_id") == "test_catalog"


def test_get_catalog_items(mocker, mock_request):
    exponea = Exponea("test")
    item = {"item_id": "1", "properties": {"field_one": "foo", "field_two": "baz"}}
    answer = {
        "success": True,
        "matched": 2,
        "limit": 20,
        "skip": 0,
        "data": [{"catalog_id": "catalog_id", **item}],
        "matched_limited": False,
        "total": 2,
    }
    mocker.patch("requests.request", mock_request(answer))
    assert exponea.catalog.get_catalog_items("catalog_id", params={}) == {
        "matched": 2,
        "limit": 20,
        "skip": 0,
        "data": [item],
        "matched_limited": False,
        "total": 2,
    }


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.update_catalog_name("catalog_id", "new_name", ["field_one", "field_two"]),
        lambda c: c.create_catalog_item("catalog_id", "item_id", {"field_one": "value_one"}),
        lambda c: c.update_catalog_item("catalog_id", "item_id", {"field_one": "value_one"}),
        lambda c: c.delete_catalog_item("catalog_id", "item_id"),
        lambda c: c.delete_catalog_items("catalog_id"),
        lambda c: c.delete_catalog("catalog_id"),
    ],
    ids=["update_name", "create_item", "update_item", "delete_item", "delete_items", "delete"],
)
def test_catalog_writes(mocker, mock_request, call):
    exponea = Exponea("test")
    mocker.patch("requests.request", mock_request({"success": True}))
    assert call(exponea.catalog) is True


# --- analyses ---------------------------------------------------------------------------


def test_get_report(mocker, mock_request):
    exponea = Exponea("test")
    answer = {
        "success": True,
        "name": "report_name",
        "header": ["column_name_1", "column_name_2"],
        "rows": [["value_1", 1]],
    }
    mocker.patch("requests.request", mock_request(answer))
    assert exponea.analyses.get_report("report_id") == {
        "name": "report_name",
        "data": [{"column_name_1": "value_1", "column_name_2": 1}],
    }


def test_get_funnel(mocker, mock_request):
    exponea = Exponea("test")
    header = ["serie", "step 1 step_one_name count", "step 2 step_two_name count"]
    header.append("step 2 event_name duration from previous")
    answer = {
        "success": True,
        "name": "funnel_name",
        "header": header,
        "rows": [["serie_name", 2, 1, 435764.1615576744]],
    }
    mocker.patch("requests.request", mock_request(answer))
    assert exponea.analyses.get_funnel("funnel_id") == {
        "name": "funnel_name",
        "data": [
            {
                "serie": "serie_name",
                "step 1 step_one_name count": 2,
                "step 2 step_two_name count": 1,
                "step 2 event_name duration from previous": 435764.1615576744,
            }
        ],
    }


def test_get_segmentation(mocker, mock_request):
    exponea = Exponea("test")
    answer = {
        "success": True,
        "name": "segmentation_name",
        "header": ["segment", "#"],
        "rows": [["segment_name_1", 0]],
    }
    mocker.patch("requests.request", mock_request(answer))
    assert exponea.analyses.get_segmentation("segmentation_id") == {
        "name": "segmentation_name",
        "data": [{"segment": "segment_name_1", "#": 0}],
    }


# --- the three error shapes -------------------------------------------------------------


def test_access_key_not_found_exception(mocker, mock_request):
    exponea = Exponea("test")
    mocker.patch(
        "requests.request", mock_request({"error": "access key not found", "success": False})
    )
    with pytest.raises(APIException) as exception:
        exponea.analyses.get_report("test")
    assert str(exception.value) == "access key not found"
    assert exception.value.args[0] == "access key not found"


def test_not_authorized_exception(mocker, mock_request):
    exponea = Exponea("test")
    message = "not authorized to update specified customer properties"
    mocker.patch("requests.request", mock_request({"errors": [message], "success": False}))
    with pytest.raises(APIException) as exception:
        exponea.tracking.update_customer_properties({"registered": "test"}, {"first_name": "L"})
    assert str(exception.value) == message


def test_errors_global_exception(mocker, mock_request):
    exponea = Exponea("test")
    answer = {"errors": {"_global": ["Customer does not exist"]}, "success": False}
    mocker.patch("requests.request", mock_request(answer))
    with pytest.raises(APIException) as exception:
        exponea.customer.get_customer({"registered": "test"})
    assert str(exception.value) == "Customer does not exist"
