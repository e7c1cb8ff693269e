"""The layout holds: outside glmtune/families/ no code names a family, and every import goes down the layers.

(a) Outside `glmtune/families/` no string literal equals a family's name, one of its transformers model_types or one
    of its special tokens; no comparison of a `model_type` or a family's `name` against a literal; no import of a
    family's record or module (only the registry: `get_family`, `detect_family`, `REGISTRY`, the shapes).
(b) Every glmtune import, lazy ones inside functions included, stays in its layer or goes to a lower one
    (`LAYERS` in tools/arch_report.py: foundation < families < data < checkpoints < training, inference < commands).
Each check is also run on a small bad source, so a check that stopped seeing anything would fail here.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "glmtune"
FAMILIES = PACKAGE / "families"


def _arch_report():
    spec = importlib.util.spec_from_file_location("arch_report", ROOT / "tools" / "arch_report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


arch = _arch_report()


def family_words() -> set[str]:
    """Every string that names a family: registry keys, model_types, special and stop tokens of each record."""
    from glmtune.families import REGISTRY

    words: set[str] = set()
    for family in REGISTRY.values():
        words |= {family.name, family.eos_token, family.pad_token, *family.model_types}
        words |= {*family.special_tokens, *family.stop_tokens, *family.lora_targets}
    return words


def family_record_names() -> set[str]:
    """Names under which glmtune.families exposes a single family: its records (GLM4 …) and family modules."""
    import glmtune.families as families
    from glmtune.families import REGISTRY, Family

    records = {name for name, value in vars(families).items() if isinstance(value, Family)}
    return records | {family.name for family in REGISTRY.values()}


def _names_family_fact(node: ast.AST) -> bool:
    """`x.model_type`, `model_type`, `cfg["model_type"]`, `cfg.get("model_type")`, `family.name`, `self.family.name`."""
    if isinstance(node, ast.Name):
        return node.id == "model_type"
    if isinstance(node, ast.Attribute):
        if node.attr == "model_type":
            return True
        owner = node.value
        owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
        return node.attr == "name" and "family" in owner_name.lower()
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "model_type"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return (
            bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "model_type"
        )
    return False


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return bool(node.elts) and all(_is_literal(element) for element in node.elts)
    return False


def family_findings(source: str, words: set[str], records: set[str]) -> list[str]:
    """Places in `source` that name a family or ask which family it is, as 'line N: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in words:
            found.append(f"line {node.lineno}: string {node.value!r} names a family fact")
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(map(_names_family_fact, operands)) and any(map(_is_literal, operands)):
                found.append(f"line {node.lineno}: compares a model_type or family name with a literal")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("glmtune.families"):
            named = {(node.module or "").rsplit(".", 1)[-1], *(alias.name for alias in node.names)}
            found += [f"line {node.lineno}: imports family {name}" for name in sorted(named & records)]
    return sorted(found, key=lambda finding: int(finding.split(":")[0].removeprefix("line ")))


def layering_findings(package: Path) -> list[str]:
    found = []
    for importer, targets in arch.module_imports(package).items():
        if not arch.layer_of(importer):
            found.append(f"{importer}: in no layer; add it to LAYERS in tools/arch_report.py")
        for target, line in targets.items():
            if arch.layer_of(importer) and not arch.may_import(importer, target):
                found.append(
                    f"{importer}:{line} ({arch.layer_of(importer)}) imports {target} ({arch.layer_of(target)})"
                )
    return found


def _outside_families() -> list[Path]:
    return [file for file in sorted(PACKAGE.rglob("*.py")) if FAMILIES not in file.parents]


@pytest.mark.parametrize("file", _outside_families(), ids=lambda file: str(file.relative_to(ROOT)))
def test_no_module_outside_families_names_a_family(file):
    findings = family_findings(file.read_text(encoding="utf-8"), family_words(), family_record_names())
    assert not findings, f"{file.relative_to(ROOT)}: " + "; ".join(findings)


def test_every_import_goes_down_the_layers():
    assert not layering_findings(PACKAGE), "\n".join(layering_findings(PACKAGE))


def test_the_family_check_sees_names_comparisons_and_record_imports():
    words, records = family_words(), family_record_names()
    name, token = sorted(family_record_names() & words)[0], "<|user|>"
    bad = (
        f"from glmtune.families import GLM4\nx = {name!r}\nif config.model_type == 'foo': pass\n"
        f"if family.name in ('a', 'b'): pass\nif cfg.get('model_type') != 'x': pass\ny = {token!r}\n"
    )
    findings = family_findings(bad, words, records)
    assert [f.split(":")[0] for f in findings] == [f"line {n}" for n in (1, 2, 3, 4, 5, 6)], findings
    assert not family_findings(
        "from glmtune.families import get_family\nx = family.eos_token\n", words, records
    )


def test_the_layering_check_sees_lazy_imports_up_the_layers(tmp_path):
    package = tmp_path / "glmtune"
    (package / "data").mkdir(parents=True)
    (package / "training").mkdir()
    for init in (package, package / "data", package / "training"):
        (init / "__init__.py").write_text("")
    (package / "training" / "train.py").write_text("from glmtune.data import prepare\n")
    (package / "data" / "prepare.py").write_text("def run():\n    from glmtune.training.train import x\n")
    (package / "stray.py").write_text("")
    assert layering_findings(package) == [
        "glmtune.data.prepare:2 (data) imports glmtune.training.train (training)",
        "glmtune.stray: in no layer; add it to LAYERS in tools/arch_report.py",
    ]
