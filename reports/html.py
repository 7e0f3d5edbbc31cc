"""Page assembly: escaped HTML fragments and the one static page (no scripts, no server)."""

from __future__ import annotations

import datetime
import html
import math

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # the formatters serve `compare` too, which draws nothing (no matplotlib)
    from .figures import Figure

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1240px; padding: 0 24px 48px; color: #1d1d1f; line-height: 1.45; }
header { border-bottom: 3px solid #2b6cb0; margin-bottom: 8px; }
h1 { font-size: 1.7em; margin: 20px 0 4px; }
h2 { font-size: 1.35em; margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 1.08em; margin: 24px 0 6px; }
nav { position: sticky; top: 0; background: #fff; padding: 6px 0; border-bottom: 1px solid #eee;
      font-size: 0.92em; z-index: 1; }
nav a { margin-right: 14px; color: #2b6cb0; text-decoration: none; }
.meta { color: #555; font-size: 0.9em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; margin: 10px 0; }
.empty { background: #f4f4f6; border-left: 4px solid #999; padding: 8px 12px; margin: 10px 0; color: #333; }
.headline { margin: 4px 0; }
figure { margin: 14px 0 26px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #333; max-width: 1000px; margin-top: 6px; }
table { border-collapse: collapse; font-size: 0.86em; margin: 8px 0 16px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f1f4f8; position: sticky; top: 30px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.good { background: #e3f4e4; }
td.bad { background: #fbe4e4; }
tr.group td { border-top: 2px solid #aaa; }
table.summary td { white-space: nowrap; }
.wide { overflow-x: auto; }
.wide th { position: static; }  /* a sticky header inside a scroll box would cover its first row */
details { margin: 8px 0; }
summary { cursor: pointer; color: #2b6cb0; }
code { background: #f4f4f6; padding: 0 3px; border-radius: 3px; }
"""


def esc(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return html.escape(str(value), quote=True)


def fmt_time(seconds) -> str:
    if seconds is None or pd.isna(seconds):
        return ""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_ratio(value) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.2f}×"


def fmt_ratio_ci(ratio, low, high) -> str:
    """A ratio with its 95% interval: "1.82× [1.71, 1.93]" (the bare ratio without one)."""
    if ratio is None or pd.isna(ratio):
        return ""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return fmt_ratio(ratio)
    return f"{ratio:.2f}× [{low:.2f}, {high:.2f}]"


def fmt_pct(value) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.0%}"


def fmt_num(value, digits=3) -> str:
    if value is None or pd.isna(value):
        return ""
    return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def paragraph(text: str, cls: str | None = None) -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<p{attr}>{esc(text)}</p>"


def empty(text: str) -> str:
    return paragraph(text, "empty")


def figure(fig: Figure) -> str:
    return (f'<figure><h3>{esc(fig.title)}</h3><img src="{esc(fig.path)}" alt="{esc(fig.title)}">'
            f"<figcaption>{esc(fig.caption)}</figcaption></figure>")


def table(df: pd.DataFrame, formats: dict | None = None, classes: dict | None = None,
          index: bool = False, span: list[str] | None = None, cls: str | None = None,
          wide: bool = False, cell_classes: dict | None = None) -> str:
    """A plain HTML table. `formats` maps a column to a function value -> text; `classes`
    maps a column to a function value -> CSS class, `cell_classes` a column to one class per
    row; numbers are right-aligned. Columns in `span` (leading columns, outermost first)
    merge runs of equal values into one cell."""
    formats, classes, span = formats or {}, classes or {}, span or []
    cell_classes = cell_classes or {}
    head = "".join(f"<th>{esc(c)}</th>" for c in ([df.index.name or ""] if index else []) + list(df.columns))
    rows = list(df.iterrows())
    keys = [tuple(str(row[c]) for c in span) for _, row in rows]
    body = []
    for i, (label, row) in enumerate(rows):
        cells = [f"<th>{esc(label)}</th>"] if index else []
        for column in df.columns:
            attrs = ""
            if column in span:
                depth = span.index(column) + 1
                if i > 0 and keys[i - 1][:depth] == keys[i][:depth]:
                    continue  # covered by the cell above
                n = 1
                while i + n < len(rows) and keys[i + n][:depth] == keys[i][:depth]:
                    n += 1
                attrs = f' rowspan="{n}"' if n > 1 else ""
            value = row[column]
            text = esc(formats[column](value) if column in formats else value)
            cell_cls = []
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                cell_cls.append("num")
            if column in classes:
                extra = classes[column](value)
                if extra:
                    cell_cls.append(extra)
            if column in cell_classes and cell_classes[column][i]:
                cell_cls.append(cell_classes[column][i])
            if cell_cls:
                attrs += f' class="{" ".join(cell_cls)}"'
            cells.append(f"<td{attrs}>{text}</td>")
        starts_group = span and i > 0 and keys[i - 1] != keys[i]
        row_attr = ' class="group"' if starts_group else ""
        body.append(f"<tr{row_attr}>{''.join(cells)}</tr>")
    table_attr = f' class="{esc(cls)}"' if cls else ""
    text = f"<table{table_attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    # a wide table scrolls in its own box (its header then no longer sticks to the page)
    return f'<div class="wide">{text}</div>' if wide else text


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, sections: list[tuple[str, str, str]], meta: str) -> str:
    """sections: (anchor, title, inner HTML)."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{esc(title)}</h1><p class=\"meta\">Built {esc(stamp)}. {meta}</p></header>",
        f"<nav>{nav}</nav>",
    ]
    parts += [section(a, t, body) for a, t, body in sections]
    parts.append("</body></html>")
    return "\n".join(parts)
