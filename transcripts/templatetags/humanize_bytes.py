from django import template

register = template.Library()


@register.filter
def bytes_h(value) -> str:
    """1536 -> '1.5 KiB' (plain text; autoescaped by the template)."""
    try:
        n = float(value)
    except (TypeError, ValueError):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""
