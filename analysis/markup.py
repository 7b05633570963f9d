"""Text from a sweep (folder names, model, source and arm names, notes) made safe for the
HTML and the Markdown that the report and the notebooks render: a name holding `<script>`,
`&`, quotes or `|` shows as written and never becomes markup (docs/faults.md, "Hostile inputs").

    markdown_text("a <b> | c")   # 'a &lt;b&gt; \\| c'
"""

from __future__ import annotations

import html

__all__ = ["Markup", "html_text", "markdown_text"]


class Markup(str):
    """Text already rendered for its format (a bold cell, a bold caption): not escaped again."""


def html_text(text: object) -> str:
    """text for HTML, quotes too (it may sit in an attribute); Markup as it is."""
    return text if isinstance(text, Markup) else html.escape(str(text))


def markdown_text(text: object) -> str:
    """text for Markdown, which renders raw HTML (Jupyter, GitHub): & < > as entities, a
    backslash and | escaped (a table cell stays one cell), and '](' broken so that no link
    or image is made; the rest is left as written. Markup as it is."""
    if isinstance(text, Markup):
        return text
    escaped = html.escape(str(text), quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return escaped.replace("](", "]\\(")
