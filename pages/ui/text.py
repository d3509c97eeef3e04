"""User text made safe: a class, file or dataset name shows exactly as typed, in Markdown and in charts."""

from __future__ import annotations

import re

__all__ = ["plain", "chart_text"]

# Characters that Markdown, Streamlit's directives (:red[…], :material/…:, emoji :…:) or KaTeX
# ($…$) give a meaning wherever they stand. A backslash makes each one literal (CommonMark).
_MARKDOWN_ANYWHERE = re.compile(r"([\\`*_{}\[\]<>$:~&|])")


# …and those that mean something only at the start of a line: a heading, a quote, a list item.
_MARKDOWN_LINE_START = re.compile(r"^(\s*)([#>+\-=]|\d+(?=[.)]))")


_BARE_LINK = re.compile(r"(?i)\b(www)\.")  # GFM turns "www.x.org" into a live link


def plain(text) -> str:
    """User-supplied text (class, file and dataset names) made safe to put into Markdown: it shows
    exactly as typed, never as bold, colour, maths, a link or an image."""
    # A line break inside a name would start a new Markdown block (a heading, a list).
    text = " ".join(str(text).splitlines())
    text = _MARKDOWN_ANYWHERE.sub(r"\\\1", text)
    text = _BARE_LINK.sub(r"\1\\.", text)

    def literal(m: re.Match) -> str:
        if m.group(2)[0].isdigit():  # "1. " starts a list: the dot after the number is what to escape
            return f"{m.group(1)}{m.group(2)}\\"
        return f"{m.group(1)}\\{m.group(2)}"

    return _MARKDOWN_LINE_START.sub(literal, text)


def chart_text(name) -> str:
    """A user-supplied name (a class, a dataset, a run) as a chart must be given it.

    Plotly reads a small HTML subset in tick labels, legends and hover text (``<b>``, ``<br>``,
    ``<a href>``, ``&amp;``-style entities): a class named ``<b>x</b>`` would show bold. With ``&``,
    ``<`` and ``>`` as entities, which plotly turns back into those characters, it shows as typed.
    """
    return str(name).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
