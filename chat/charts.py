"""Server-rendered inline SVG charts for the admin usage page (no JavaScript, no CDN)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe


def fmt_tokens(value: float) -> str:
    value = float(value or 0)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def fmt_usd(value: float | Decimal) -> str:
    value = float(value or 0)
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def column_chart(
    *,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    fmt: Callable[[float], str] = fmt_tokens,
    color: str = "#417690",
    width: int = 760,
    height: int = 240,
    label_every: int = 5,
) -> SafeString:
    """Vertical bars (one per label, e.g. per day) with a max gridline and a <title> tooltip per bar."""
    left, right, top, bottom = 56, 10, 28, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = max([float(v or 0) for v in values] + [0.0])
    n = max(len(values), 1)
    slot = plot_w / n
    bar_w = max(slot * 0.7, 1.0)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="usage-chart" width="{width}" '
        f'height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{escape(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold" fill="#333">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{width - right}" y2="{top}" '
        'stroke="#ddd" stroke-dasharray="3,3"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end" fill="#666">'
        f"{escape(fmt(top_value))}</text>",
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end" fill="#666">0</text>',
    ]
    for i, (label, value) in enumerate(zip(labels, values)):
        value = float(value or 0)
        h = 0.0 if top_value <= 0 else plot_h * value / top_value
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h - h
        out.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{color}">'
            f"<title>{escape(label)}: {escape(fmt(value))}</title></rect>"
        )
        if i % label_every == 0 or i == len(values) - 1:
            out.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14}" '
                'font-size="10" text-anchor="middle" fill="#666">'
                f"{escape(label)}</text>"
            )
    if not values:
        out.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" '
            'text-anchor="middle" fill="#999">no data</text>'
        )
    out.append("</svg>")
    return mark_safe("".join(out))


def bar_chart(
    *,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    notes: Sequence[str] | None = None,
    fmt: Callable[[float], str] = fmt_tokens,
    color: str = "#79aec8",
    width: int = 760,
    row: int = 22,
) -> SafeString:
    """Horizontal bars (one row per label, e.g. per model or user), the value printed after each."""
    left, right, top = 200, 150, 28
    height = top + max(len(values), 1) * row + 10
    plot_w = width - left - right
    top_value = max([float(v or 0) for v in values] + [0.0])
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="usage-chart" width="{width}" '
        f'height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{escape(title)}">',
        f'<text x="4" y="16" font-size="13" font-weight="bold" fill="#333">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(zip(labels, values)):
        value = float(value or 0)
        y = top + i * row
        w = 0.0 if top_value <= 0 else plot_w * value / top_value
        short = label if len(label) <= 30 else label[:29] + "…"
        note = f" · {notes[i]}" if notes else ""
        out.append(
            f'<text x="{left - 6}" y="{y + row * 0.65:.1f}" font-size="11" text-anchor="end" fill="#333">'
            f"{escape(short)}</text>"
            f'<rect class="bar" x="{left}" y="{y + 3}" '
            f'width="{max(w, 1.0):.1f}" height="{row - 6}" fill="{color}">'
            f"<title>{escape(label)}: {escape(fmt(value))}{escape(note)}</title></rect>"
            f'<text x="{left + w + 6:.1f}" y="{y + row * 0.65:.1f}" font-size="11" fill="#333">'
            f"{escape(fmt(value))}{escape(note)}</text>"
        )
    if not values:
        out.append(f'<text x="{left}" y="{top + 14}" fill="#999">no data</text>')
    out.append("</svg>")
    return mark_safe("".join(out))
