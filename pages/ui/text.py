"""User text made safe: a class, file or dataset name shows exactly as typed, in Markdown and in charts.

The one boundary between user-supplied text (class, task and label names, file names, link parameters,
run labels) and what Streamlit renders: ``plain`` for anything that goes through Markdown (st.markdown,
captions, alerts, widget labels and radio options, expander titles), ``table`` for st.table (whose cells
are Markdown too), ``chart_text`` for plotly. Invisible characters (direction overrides, zero-width
spaces) are shown escaped, so "x\u202etxt.exe" cannot pose as "xexe.txt".
"""

from __future__ import annotations

import re
import unicodedata

import streamlit as st

__all__ = ["plain", "visible", "table", "chart_text"]

# Characters that Markdown, Streamlit's directives (:red[…], :material/…:, emoji :…:) or KaTeX
# ($…$) give a meaning wherever they stand. A backslash makes each one literal (CommonMark).
# "@": GFM turns a bare e-mail address into a mailto link.
_MARKDOWN_ANYWHERE = re.compile(r"([\\`*_{}\[\]<>$:~&|@!])")


# …and those that mean something only at the start of a line: a heading, a quote, a list item.
_MARKDOWN_LINE_START = re.compile(r"^(\s*)([#>+\-=]|\d+(?=[.)]))")


# GFM turns "www.x.org", "http://x" and "a@b.org" into live links, and it finds them in the text after
# escapes are resolved, so a backslash does not stop it: an invisible word joiner after "www", "http"
# or "@" does (the text looks the same; what it matches no longer does).
_BARE_LINK = re.compile(r"(?i)\bwww(?=\.)|\bhttps?(?=\\:)|@(?=[-\w])")
_JOINER = "\u2060"


def visible(text, most: int | None = None) -> str:
    """``text`` with its invisible characters (format and control characters: direction overrides,
    zero-width spaces, line breaks) written out as ``\\u202e``, cut to ``most`` characters."""
    text = str(text)
    if most is not None and len(text) > most:
        text = text[:most] + "…"
    return "".join(ch if unicodedata.category(ch) not in ("Cf", "Cc") else
                   (" " if ch in "\n\r\t" else f"\\u{ord(ch):04x}") for ch in text)


def plain(text, most: int | None = None) -> str:
    """User-supplied text (class, file and dataset names, link parameters, run labels) made safe to
    put into Markdown: it shows exactly as typed, never as bold, colour, maths, a link or an image;
    invisible characters show escaped, and ``most`` cuts a long text."""
    # A line break inside a name would start a new Markdown block (a heading, a list).
    text = visible(text, most)
    text = _MARKDOWN_ANYWHERE.sub(r"\\\1", text)
    text = _BARE_LINK.sub(lambda m: m.group(0) + _JOINER, text)

    def literal(m: re.Match) -> str:
        if m.group(2)[0].isdigit():  # "1. " starts a list: the dot after the number is what to escape
            return f"{m.group(1)}{m.group(2)}\\"
        return f"{m.group(1)}\\{m.group(2)}"

    return _MARKDOWN_LINE_START.sub(literal, text)


def table(rows: list[dict], **kwargs) -> None:
    """``st.table`` of ``rows`` whose text cells (and column names) show as typed: st.table renders
    Markdown in every cell, so a class named "**x**" was bold and "[x](http://…)" a live link."""
    st.table([{plain(k): plain(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows], **kwargs)


def chart_text(name) -> str:
    """A user-supplied name (a class, a dataset, a run) as a chart must be given it.

    Plotly reads a small HTML subset in tick labels, legends and hover text (``<b>``, ``<br>``,
    ``<a href>``, ``&amp;``-style entities): a class named ``<b>x</b>`` would show bold. With ``&``,
    ``<`` and ``>`` as entities, which plotly turns back into those characters, it shows as typed.
    """
    return visible(name).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
