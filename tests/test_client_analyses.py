"""exponea.analyses against FakeExponea: the seed examples (rows become dicts)."""

from __future__ import annotations

import pytest
from conftest import TOKEN

from tracker_agent.exceptions import InvalidResponseError, NotFoundError, ValidationError


def test_seed_get_report_returns_rows_as_dicts(exponea, fake):
    fake.add_analysis(
        "report", "report_id", "report_name", ["column_name_1", "column_name_2"], [["value_1", 1]]
    )
    assert exponea.analyses.get_report("report_id") == {
        "name": "report_name",
        "data": [{"column_name_1": "value_1", "column_name_2": 1}],
    }
    request = fake.requests[0]
    assert request.path == f"/data/v2/projects/{TOKEN}/analyses/report"
    assert request.json == {"analysis_id": "report_id", "format": "table_json"}


def test_seed_get_funnel_returns_drill_downs(exponea, fake):
    header = [
        "serie",
        "step 1 step_one_name count",
        "step 2 step_two_name count",
        "step 2 event_name duration from previous",
    ]
    fake.add_analysis(
        "funnel", "funnel_id", "funnel_name", header, [["serie_name", 2, 1, 435764.1615576744]]
    )
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


def test_seed_get_segmentation_returns_segments(exponea, fake):
    fake.add_analysis(
        "segmentation",
        "segmentation_id",
        "segmentation_name",
        ["segment", "#"],
        [["segment_name_1", 0]],
    )
    assert exponea.analyses.get_segmentation("segmentation_id") == {
        "name": "segmentation_name",
        "data": [{"segment": "segment_name_1", "#": 0}],
    }


def test_get_analysis_by_type_and_empty_tables(exponea, fake):
    fake.add_analysis("report", "empty", "nothing", ["a"], [])
    assert exponea.analyses.get_analysis("report", "empty") == {"name": "nothing", "data": []}


def test_unknown_analysis_is_not_found(exponea):
    with pytest.raises(NotFoundError) as info:
        exponea.analyses.get_report("missing")
    assert info.value.status_code == 404


def test_answer_without_rows_is_an_invalid_response(exponea, fake):
    fake.fail_next(3, status=200, body={"success": True, "name": "x", "header": ["a"]})
    with pytest.raises(InvalidResponseError):
        exponea.analyses.get_report("r")


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda a: a.get_analysis("dashboard", "x"), "analysis_type"),
        (lambda a: a.get_report(""), "analysis_id"),
        (lambda a: a.get_funnel(7), "analysis_id"),
    ],
)
def test_bad_analysis_input_raises_and_sends_nothing(exponea, fake, call, field):
    with pytest.raises(ValidationError) as info:
        call(exponea.analyses)
    assert info.value.field == field
    assert fake.requests == []
