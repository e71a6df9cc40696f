"""Imports in src/meddenoise follow the layer order of docs/architecture.md (lazy imports included)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "meddenoise"


def documented_layers() -> dict[str, int]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("<!-- import-layers -->")[1].split("<!-- /import-layers -->")[0]
    layers = {}
    for line in block.strip().splitlines():
        number, names = line.split(".", 1)
        for name in re.findall(r"`([\w_]+)`", names):
            layers[name] = int(number)
    return layers


def unit_of(module: str) -> str:
    """`meddenoise.engine.train` -> `engine`; the package root is `meddenoise`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports_by_file():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(part for part in relative.parts if part != "__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            else:
                continue
            for target in targets:
                yield path, module, target


def test_every_package_has_a_documented_layer():
    layers = documented_layers()
    units = {unit_of(module) for _, module, _ in imports_by_file()} - {"meddenoise"}
    assert units <= set(layers), sorted(units - set(layers))


def test_imports_only_go_down_the_layers():
    layers = documented_layers()
    wrong = []
    for path, module, target in imports_by_file():
        if not target.startswith("meddenoise"):
            continue
        source, dest = unit_of(module), unit_of(target)
        if dest == "meddenoise" or dest == source:  # the lazy package root; one's own package
            continue
        if not layers[dest] > layers[source]:
            wrong.append(f"{path.relative_to(ROOT)}: {module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_only_engine_distributed_imports_torch_distributed():
    offenders = [
        str(path.relative_to(ROOT))
        for path, module, target in imports_by_file()
        if target.startswith("torch.distributed") and module != "meddenoise.engine.distributed"
    ]
    assert not offenders, offenders


def test_the_package_root_imports_nothing_eagerly():
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    eager = [
        node
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and any(
            (getattr(node, "module", None) or alias.name).startswith("meddenoise") for alias in node.names
        )
    ]
    assert not eager
