"""The safety report and the moderator console's pages, rendered from one set of Jinja2 templates.

``render_report`` makes the self-contained ``report.html`` (inline CSS and SVG, no scripts, no external
requests, readable printed) that the worker writes and the API serves; ``render_page`` renders the console's
pages, whose job page includes the same report body.
"""

from tunegate.reporting.render import render_page, render_report

__all__ = ["render_page", "render_report"]
