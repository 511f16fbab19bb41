"""How imgclf's results show themselves in Jupyter: one HTML layout for every result's ``_repr_html_``.

A result renders as a title, a few lines of facts, tables and notes (warnings are shown as an alert),
through one Jinja2 template with autoescaping, so no value a run folder holds can inject markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2

_TEMPLATE = jinja2.Environment(autoescape=True).from_string("""\
<div class="imgclf-result" style="max-width:100%;overflow-x:auto">
<strong>{{ title }}</strong>
{% for line in facts %}<div>{{ line }}</div>{% endfor %}
{% for table in tables %}
<table style="margin:0.4em 0">
{% if table.caption %}<caption style="text-align:left">{{ table.caption }}</caption>{% endif %}
{% if table.columns|select|list %}
<thead><tr>{% for column in table.columns %}<th>{{ column }}</th>{% endfor %}</tr></thead>
{% endif %}
<tbody>{% for row in table.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table>
{% endfor %}
{% for line in warnings %}<div style="color:#8a1c1c;font-weight:600">&#9888; {{ line }}</div>{% endfor %}
{% for line in notes %}<div>{{ line }}</div>{% endfor %}
</div>""")


def cell(value: Any, digits: int = 4) -> str:
    """A table cell's text: floats to ``digits`` decimals, None as empty, everything else as ``str``."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@dataclass
class Table:
    """One table of a result's HTML: column titles and rows of cells (any values; see :func:`cell`).

    Columns that are empty in every row are left out when it is rendered.
    """

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""

    def visible(self) -> Table:
        """The table without the columns that are empty in every row."""
        keep = [i for i in range(len(self.columns)) if any(cell(row[i]) for row in self.rows)] or list(
            range(len(self.columns)))
        return Table([self.columns[i] for i in keep], [[cell(row[i]) for i in keep] for row in self.rows],
                     self.caption)


@dataclass
class ResultHTML:
    """A result as Jupyter shows it: ``title``, lines of ``facts``, ``tables``, ``warnings`` (an alert) and
    ``notes``. :meth:`render` gives the HTML."""

    title: str
    facts: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        """The HTML fragment (every value escaped)."""
        return _TEMPLATE.render(title=self.title, facts=self.facts, tables=[t.visible() for t in self.tables],
                                warnings=self.warnings, notes=self.notes)

