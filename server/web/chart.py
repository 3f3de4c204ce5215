"""The district page's chart: the Enterprise order's licenses used after each run over
90 days, as inline SVG drawn here (no script, nothing fetched from elsewhere)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape

WIDTH, HEIGHT, PAD = 600, 180, 30


def usage_svg(
    points: Sequence[tuple[datetime, int]], licenses: int, now: datetime, days: int = 90
) -> str:
    """An SVG line of `used` over the last `days`, with the order's total as a dashed line."""
    start = now - timedelta(days=days)
    top = max([licenses, *(used for _, used in points), 1])

    def x(moment: datetime) -> float:
        span = (now - start).total_seconds() or 1.0
        return PAD + (WIDTH - 2 * PAD) * max(0.0, (moment - start).total_seconds()) / span

    def y(value: int) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * value / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'role="img" class="chart" aria-label="licenses used after each run, last 90 days">',
        f'<line x1="{PAD}" y1="{y(0):.1f}" x2="{WIDTH - PAD}" y2="{y(0):.1f}" class="axis"/>',
        f'<line x1="{PAD}" y1="{y(licenses):.1f}" x2="{WIDTH - PAD}" y2="{y(licenses):.1f}" '
        'class="total"/>',
        f'<text x="{PAD}" y="{y(licenses) - 4:.1f}" class="label">{licenses} licenses</text>',
        f'<text x="{PAD}" y="{HEIGHT - 8}" class="label">{escape(f"{start:%Y-%m-%d}")}</text>',
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" class="label end">'
        f"{escape(f'{now:%Y-%m-%d}')}</text>",
    ]
    if points:
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        parts.append(f'<polyline points="{path}" class="used"/>')
        for moment, used in points:
            title = escape(f"{moment:%Y-%m-%d %H:%M} UTC: {used} used")
            parts.append(
                f'<circle cx="{x(moment):.1f}" cy="{y(used):.1f}" r="3" class="dot">'
                f"<title>{title}</title></circle>"
            )
    else:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" class="label middle">no runs in 90 days</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
