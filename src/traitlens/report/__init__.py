"""Reports: self-contained HTML pages with figures and tables, and the words and legends that go with them."""

from traitlens.report.atlas_html import write_atlas_html
from traitlens.report.findings import (
    NEAR_CHANCE_GAP,
    Findings,
    accuracy_status,
    accuracy_warning,
    findings,
    near_chance_threshold,
)
from traitlens.report.html import CONTENT_WIDTH_PX, HtmlReport, Swatch
from traitlens.report.legend import (
    COLUMN_LEGEND,
    SOURCE_COLOURS,
    SOURCE_LEGEND,
    leaderboard_figure,
    leaderboard_legend,
)

__all__ = ["COLUMN_LEGEND", "CONTENT_WIDTH_PX", "NEAR_CHANCE_GAP", "SOURCE_COLOURS", "SOURCE_LEGEND", "Findings",
           "HtmlReport", "Swatch", "accuracy_status", "accuracy_warning", "findings", "leaderboard_figure",
           "leaderboard_legend", "near_chance_threshold", "write_atlas_html"]
