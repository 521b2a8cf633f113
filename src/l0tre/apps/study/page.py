"""The study folders' ``index.html``: a self-contained page of tables and figures (shared by the
global study and the comparison), and their ``results.json``."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...atomic import atomic_write_text

__all__ = ["INDEX_HTML", "RESULTS_JSON", "fmt", "html_table", "write_json", "write_page"]

INDEX_HTML = "index.html"
RESULTS_JSON = "results.json"

_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;"
          "text-align:right;font-size:90%}th{background:#f0f0f0}img{max-width:100%;border:1px solid #ddd;"
          "margin:.4em 0}p.note{color:#555;font-size:90%}")


def fmt(value: Any, digits: int = 3) -> str:
    """A value for a table cell."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table (cells escaped)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _clean(value: Any) -> Any:
    """Strict JSON: NaN/Inf → ``None``, tuples → lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as strict JSON, atomically."""
    atomic_write_text(path, json.dumps(_clean(data), indent=1, allow_nan=False) + "\n")


def write_page(path: Path, title: str, blocks: Sequence[tuple[str, str]], figures: Sequence[Path]) -> Path:
    """``index.html``: ``blocks`` of (heading, HTML) then the ``figures`` (linked by file name)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, body in blocks:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [f"<p><img src='{html.escape(f.name)}' alt='{html.escape(f.stem)}'></p>" for f in figures]
    parts.append(f"<p class='note'>Data: <a href='{RESULTS_JSON}'>{RESULTS_JSON}</a></p></body></html>\n")
    atomic_write_text(path, "".join(parts))
    return path
