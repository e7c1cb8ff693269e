"""Placeholders in training data: fill the recipe's syntax from `[data] variables`, and spot the unfilled ones.

Datasets mark the parts a user should fill in three ways: `{{name}}` (glmtune's default), `[NAME]` and `<NAME>`
(ChatGLM-Efficient-Tuning's and LLaMA-Factory's identity data). `[data] placeholders` names the syntax to fill;
a placeholder of that syntax without a value is an error. Text that looks like a placeholder of another known
syntax would be trained as literal text, so `Scan` counts it for a warning with one example.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from glmtune.errors import UsageError

SYNTAXES = {
    "{{name}}": re.compile(r"\{\{\s*(\w+)\s*\}\}"),
    "[NAME]": re.compile(r"\[([A-Z][A-Z0-9_]+)\]"),
    "<NAME>": re.compile(r"<([A-Z][A-Z0-9_]+)>"),
}


def fill(value: Any, variables: Mapping[str, str], syntax: str, origin: str) -> Any:
    """`value` (a record, list or string) with every `syntax` placeholder replaced by its variable."""
    if isinstance(value, str):
        return SYNTAXES[syntax].sub(lambda match: _value_of(match, variables, syntax, origin), value)
    if isinstance(value, list):
        return [fill(v, variables, syntax, origin) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, variables, syntax, origin) for k, v in value.items()}
    return value


def _value_of(match: re.Match[str], variables: Mapping[str, str], syntax: str, origin: str) -> str:
    name = match.group(1)
    for key in (name, name.lower(), name.upper()):  # <NAME> is filled by `name = "..."` as well as `NAME`
        if key in variables:
            return variables[key]
    raise UsageError(
        f'{origin}: placeholder {match.group(0)} has no value; add {name.lower()} = "..." under [data.variables]'
        + (
            f" (or set data.placeholders if {match.group(0)} is meant literally)"
            if syntax != "{{name}}"
            else ""
        )
    )


@dataclass
class Scan:
    """Placeholders of the syntaxes the recipe does not fill, counted over the texts of the data."""

    syntax: str  # the one the recipe fills
    counts: dict[str, Counter[str]] = field(default_factory=dict)  # syntax -> placeholder -> occurrences
    example: dict[str, str] = field(default_factory=dict)  # syntax -> "origin: text"

    def add(self, value: Any, origin: str) -> None:
        if isinstance(value, str):
            self._add_text(value, origin)
        elif isinstance(value, list):
            for item in value:
                self.add(item, origin)
        elif isinstance(value, dict):
            for item in value.values():
                self.add(item, origin)

    def _add_text(self, text: str, origin: str) -> None:
        for syntax, pattern in SYNTAXES.items():
            if syntax == self.syntax:
                continue
            found = [match.group(0) for match in pattern.finditer(text)]
            if not found:
                continue
            self.counts.setdefault(syntax, Counter()).update(found)
            self.example.setdefault(syntax, f"{origin}: {_snippet(text, found[0])}")

    def warnings(self, key: str) -> list[str]:
        """One line per syntax seen: counts, one example, and the recipe keys that fill them."""
        lines = []
        for syntax, counts in self.counts.items():
            listed = ", ".join(f"{name} x{count}" for name, count in counts.most_common(5))
            names = sorted({SYNTAXES[syntax].fullmatch(name).group(1).lower() for name in counts})  # type: ignore[union-attr]
            lines.append(
                f"{key}: {sum(counts.values())} unfilled {syntax} placeholders would be trained as text ({listed}); "
                f"e.g. {self.example[syntax]}; to fill them set data.placeholders = {syntax!r} and "
                + ", ".join(f'{name} = "..."' for name in names)
                + " under [data.variables]"
            )
        return lines


def _snippet(text: str, placeholder: str, width: int = 30) -> str:
    at = text.find(placeholder)
    start, end = max(0, at - width), min(len(text), at + len(placeholder) + width)
    return ("…" if start else "") + text[start:end].replace("\n", " ") + ("…" if end < len(text) else "")
