"""Text that reaches people: escaping for Markdown / HTML and numbers rounded for reading. Torch-free.

Class names come from folder names, candidate names and params from files a user (or an attacker) controls;
everything that goes into report.md, report.html, the model card or a Prefect artifact goes through these
helpers, so a class named `<b>x<`, `a|b` or one with a newline cannot inject markup or break a table.

    md_cell("a|b\\nc")   -> 'a\\|b\\\\nc'        (a table cell: pipes and line breaks neutralised)
    md_code("x`y")       -> '``x`y``'           (an inline code span that the text cannot close)
    html_text("<b>x<")   -> '&lt;b&gt;x&lt;'
    pct(98.05555555)     -> '98.06 %';  human(None) -> '-'
"""
from __future__ import annotations

import html
import json
import math
import re
from typing import Any

MISSING = "-"
# Markdown punctuation that starts emphasis, code, links or tables anywhere in a line. `(`, `!` only act after
# `[`/`]` (escaped), `#`, `+`, `-` only at the start of a line (_MD_LINE_START), and `_` only at word edges
# (CommonMark ignores intra-word underscores): `finetuned_ov_fp16 (+0.20 pt)` stays readable in the raw file.
_MD_SPECIAL = re.compile(r"([\\`*\[\]~|])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_MD_LINE_START = re.compile(r"^(\s*(?:\d+)?)(#+|=+|[+>-]|(?<=\d)[.)])(?=\s|$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")


def one_line(text: Any) -> str:
    """str(text) with line breaks and other control characters made visible (`\\n`, `\\x07`): one line, and two
    names that differ only there stay distinguishable."""
    def visible(m: re.Match) -> str:
        c = m.group(0)
        return {"\n": "\\n", "\r": "\\r", "\t": " "}.get(c, f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")

    return _CONTROL.sub(visible, str(text))


def md_text(text: Any, line_start: bool = False) -> str:
    """Inline Markdown text: no HTML, no emphasis / link / code markup, one line. `line_start`: the text begins
    a line or a list item, where `# `, `- `, `1. ` would make a heading or a list. None -> '-'."""
    s = one_line(MISSING if text is None else text)
    s = s.replace("&", "&amp;").replace("<", "&lt;")  # no tag, no entity can start; `>` mid-line is text
    s = _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), s)
    return _MD_LINE_START.sub(lambda m: f"{m.group(1)}\\{m.group(2)}", s) if line_start else s


def md_cell(text: Any) -> str:
    """A Markdown table cell (md_text escapes `|` too); empty or None -> '-'."""
    s = md_text(text) if text is not None else MISSING
    return s if s.strip() else MISSING


def md_code(text: Any, in_table: bool = False) -> str:
    """An inline code span the text cannot close or break (longest backtick run + 1 as the fence). Inside a
    code span `<b>` is shown literally; in a table cell (`in_table`) pipes need escaping even there."""
    s = one_line(MISSING if text is None else text)
    s = s.replace("|", "\\|") if in_table else s
    fence = "`" * (max((len(r) for r in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def html_text(text: Any) -> str:
    """Text for an HTML element or a quoted attribute (quotes escaped too). None -> '-'."""
    return html.escape(MISSING if text is None else str(text), quote=True)


# --- numbers for people ---------------------------------------------------------------------------------------

def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def num(v: Any, digits: int = 2) -> str:
    """Fixed decimals with thousands separators: 1234.5 -> '1,234.50'; None/NaN -> '-'."""
    return f"{v:,.{digits}f}" if _finite(v) else MISSING


def pct(v: Any, digits: int = 2) -> str:
    """A percentage: 98.0555 -> '98.06 %'."""
    return f"{v:.{digits}f} %" if _finite(v) else MISSING


def pt(v: Any, digits: int = 2, sign: bool = True) -> str:
    """Percentage points: 0.2 -> '+0.20 pt'."""
    return f"{v:{'+' if sign else ''}.{digits}f} pt" if _finite(v) else MISSING


def ms(v: Any) -> str:
    """Milliseconds: 3 decimals below 10 ms, 1 above."""
    return (f"{v:.3f} ms" if abs(v) < 10 else f"{v:,.1f} ms") if _finite(v) else MISSING


def count(v: Any) -> str:
    """An integer count: 72666 -> '72,666'."""
    return f"{int(v):,}" if _finite(v) else MISSING


def size(nbytes: Any) -> str:
    """Bytes for people: 36000 -> '36.0 KB', 2_000_000 -> '2.00 MB' (SI units, as the size gate)."""
    if not _finite(nbytes):
        return MISSING
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.{2 if unit != 'KB' else 1}f} {unit}"
    return f"{int(nbytes)} B"


def human(v: Any) -> str:
    """Any value as a person reads it: None -> '-', floats to 4 significant digits (no 98.05555555555556),
    whole numbers with separators, lists joined, dicts as compact JSON."""
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == int(v) and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:.2g}" if abs(v) < 0.01 else f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(human(x) for x in v) + "]"
    if isinstance(v, dict):
        return json.dumps(v, separators=(", ", ": "), default=str)
    return str(v)
