"""The safety report: one JSON document and a self-contained HTML page (inline SVG plots, no scripts)."""
