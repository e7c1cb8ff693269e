"""Reading recipes: a TOML file, its `extends` chain and `--set` overrides, validated into one `Recipe`.

Relative paths are resolved against the file that wrote them (a shared base recipe may live in another folder than
the team recipe that extends it); a relative path given with `--set` against the current folder, like any other path
typed on the command line. Every problem is reported at once with its TOML path; an unknown key suggests the nearest
valid one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ValidationError

from glmtune.errors import UsageError
from glmtune.recipe import PATH_KEYS, SOURCE_KEYS, Recipe, is_source_name


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file, follow `extends`, apply `--set key=value` overrides and validate everything at once."""
    path = Path(path)
    raw = _read_chain(path, seen=())
    for override in overrides or []:
        _apply_override(raw, override)
    return recipe_from_dict(raw, where=str(path))


def recipe_from_dict(raw: dict[str, Any], where: str) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
        raise UsageError(f"{where}: " + "; ".join(problems)) from None


def _read_chain(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in seen:
        raise UsageError(f"{path}: `extends` loops back to itself ({' -> '.join(p.name for p in seen)})")
    if not path.is_file():
        raise UsageError(f"{path}: recipe file not found; give the path of a .toml recipe (see recipes/)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    _resolve_paths(data, path.parent)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise UsageError(f"{path}: extends: expected a relative path string")
    base = _read_chain(path.parent / parent, seen=(*seen, resolved))
    return _deep_merge(base, data)


def _resolve_paths(data: dict[str, Any], folder: Path) -> None:
    for section, key in PATH_KEYS:
        table = data.get(section)
        if not isinstance(table, dict) or key not in table:
            continue
        value = table[key]
        if (section, key) == ("launch", "zero") and not str(value).endswith(".json"):
            continue  # a preset name, not a path
        may_name = (section, key) in SOURCE_KEYS
        if isinstance(value, str):
            table[key] = _resolve_one(value, folder, may_name)
        elif isinstance(value, list):
            table[key] = [_resolve_one(v, folder, may_name) if isinstance(v, str) else v for v in value]


def _resolve_one(value: str, folder: Path, may_name: bool = False) -> str:
    if ":" in value.split("/")[0] or Path(value).is_absolute():
        return value  # "builtin:..." names and absolute paths stay as they are
    if may_name and is_source_name(value) and not (folder / value).exists():
        return value  # the name of a data.registry entry, looked up when the data is read
    return str((folder / value).resolve())


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {override!r}: expected KEY=VALUE, e.g. --set train.learning_rate=1e-4")
    parts = key.strip().split(".")
    table = raw
    for part in parts[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise UsageError(f"--set {override!r}: {part} is not a section")
    table[parts[-1]] = _parse_value(text.strip())
    if tuple(parts) in PATH_KEYS:
        # A path typed on the command line is read from the current folder, as the shell completed it and as every
        # other command-line path is; only the recipe file knows its own folder.
        _resolve_paths({parts[0]: table}, Path.cwd())


def _parse_value(text: str) -> Any:
    # TOML syntax gives numbers, booleans, lists and quoted strings; anything else is taken as a bare string.
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _describe(error: Any) -> str:
    location = [str(part) for part in error["loc"]]
    dotted = ".".join(location) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{dotted}: unknown key{_suggest(location)}"
    if error["type"] == "missing":
        return f"{dotted}: missing required key"
    if error["type"] == "bool_type":
        return f"{dotted}: expected true or false, unquoted (got {_short(error.get('input'))})"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in {"value_error", "assertion_error"} and (
        not location or message.startswith(location[0])
    ):
        return message
    return f"{dotted}: {message} (got {_short(error.get('input'))})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(location: list[str]) -> str:
    model: type[BaseModel] = Recipe
    for part in location[:-1]:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    candidates = list(model.model_fields)
    close = difflib.get_close_matches(location[-1], candidates, n=1, cutoff=0.5)
    prefix = ".".join(location[:-1])
    if close:
        return f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)"
    return f" (valid keys: {', '.join(candidates)})"
