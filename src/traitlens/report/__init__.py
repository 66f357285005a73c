"""Reports: self-contained HTML pages with figures and tables."""

from traitlens.report.html import HtmlReport

__all__ = ["HtmlReport"]
