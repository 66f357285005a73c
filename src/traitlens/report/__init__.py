"""Reports: self-contained HTML pages with figures and tables."""

from traitlens.report.atlas_html import write_atlas_html
from traitlens.report.html import HtmlReport

__all__ = ["HtmlReport", "write_atlas_html"]
