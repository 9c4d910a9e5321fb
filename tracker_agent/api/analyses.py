"""The Analyses API (private key): reports, funnels and segmentations as table rows."""

from __future__ import annotations

from typing import Any

from tracker_agent.api import Namespace, normalize_name
from tracker_agent.exceptions import ValidationError

__all__ = ["Analyses", "ANALYSIS_TYPES"]

ANALYSIS_TYPES = frozenset({"report", "funnel", "segmentation"})
TABLE_FORMAT = "table_json"


class Analyses(Namespace):
    """POST /data/v2/projects/{token}/analyses/{report|funnel|segmentation}."""

    path_prefix = "/data/v2/projects/{token}/analyses"

    def get_analysis(self, analysis_type: str, analysis_id: str) -> dict[str, Any]:
        """{"name", "data": [{column header: value}, ...]} of any analysis type."""
        if analysis_type not in ANALYSIS_TYPES:
            raise ValidationError("analysis_type", f"must be one of {sorted(ANALYSIS_TYPES)}")
        analysis_id = normalize_name(analysis_id, "analysis_id")
        payload = {"analysis_id": analysis_id, "format": TABLE_FORMAT}
        response = self._call(
            "POST",
            f"/{analysis_type}",
            json=payload,
            read=True,
            require={"header": list, "rows": list},
        )
        header = response["header"]
        # A short row leaves columns out instead of failing.
        rows = [
            dict(zip(header, row, strict=False))
            for row in response["rows"]
            if isinstance(row, list)
        ]
        return {"name": response.get("name"), "data": rows}

    def get_report(self, report_id: str) -> dict[str, Any]:
        """A report: one dict per row."""
        return self.get_analysis("report", report_id)

    def get_funnel(self, funnel_id: str) -> dict[str, Any]:
        """A funnel: one dict per drill-down."""
        return self.get_analysis("funnel", funnel_id)

    def get_segmentation(self, segmentation_id: str) -> dict[str, Any]:
        """A segmentation: one dict per segment."""
        return self.get_analysis("segmentation", segmentation_id)
