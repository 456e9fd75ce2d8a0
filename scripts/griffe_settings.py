"""A Griffe extension for the docs site: a settings dataclass field written as
``name: type = setting(default, "doc", ...)`` (``spiral_fast._fields.setting``) keeps its documentation in
the field's metadata, which Griffe cannot see; this gives the field that text as its docstring, read
statically from the call, so the API reference lists every TOML key with its help text.

Used by mkdocs.yml (mkdocstrings, ``extensions: [scripts/griffe_settings.py:SettingDocs]``).
"""

from __future__ import annotations

import ast

import griffe


class SettingDocs(griffe.Extension):
    """Attribute docstrings from ``setting(default, "doc")`` calls in class bodies."""

    def on_attribute_instance(self, *, node, attr, agent, **kwargs) -> None:
        """Give ``attr`` the doc string of its ``setting(...)`` value when it has no docstring of its own."""
        if attr.docstring is not None or not isinstance(node, ast.AnnAssign | ast.Assign):
            return
        call = node.value
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", None)) == "setting"):
            return
        if len(call.args) >= 2 and isinstance(call.args[1], ast.Constant) and isinstance(call.args[1].value, str):
            attr.docstring = griffe.Docstring(call.args[1].value, lineno=node.lineno, parent=attr)
