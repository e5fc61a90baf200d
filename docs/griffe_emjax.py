"""A Griffe extension that adapts emjax's docstrings to mkdocstrings' Google parser (docs build only).

emjax's docstrings are Google style with a few habits the parser reads differently:

* ``Example:`` (singular) opens an admonition in Griffe, whose doctest lines would render as
  Markdown; it is read here as ``Examples:``, so the doctests render as code.
* Sphinx roles (``:func:`emjax.fit```, ``:class:``, ``:data:`` ...) become inline code.
* A ``Raises:`` entry whose description continues on a line at the entry's own indentation is
  joined to that entry, so it is not mistaken for a new ``Exception: description`` pair.

Nothing here changes emjax itself.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:func|class|data|meth|attr|mod|obj|exc|const|py:\w+):`~?([^`]+)`")
_ENTRY = re.compile(r"^\s*[A-Za-z_][\w.]*\s*:")


def _raises(lines: list[str]) -> list[str]:
    out: list[str] = []
    inside = False
    for line in lines:
        stripped = line.strip()
        if stripped in ("Raises:", "Raise:", "Exceptions:"):
            inside = True
            out.append(line)
            continue
        if inside:
            if not stripped or not line.startswith((" ", "\t")):
                inside = bool(stripped) and line.startswith((" ", "\t"))
                out.append(line)
                continue
            if not _ENTRY.match(line) and out:
                out[-1] = out[-1].rstrip() + " " + stripped
                continue
        out.append(line)
    return out


def clean(text: str) -> str:
    text = re.sub(r"^(\s*)Example:\s*$", r"\1Examples:", text, flags=re.M)
    text = _ROLE.sub(lambda m: f"``{m.group(1)}``", text)
    return "\n".join(_raises(text.split("\n")))


class EmjaxDocstrings(griffe.Extension):
    """Apply :func:`clean` to every docstring Griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = clean(obj.docstring.value)
