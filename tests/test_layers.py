"""Imports flow cli -> ops -> storage -> engine and never back; only cli imports Typer/Rich/tqdm."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "tidepool_cli"
ORDER = ["engine", "storage", "ops", "cli"]
UI = {"typer", "rich", "tqdm", "click"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tidepool_cli" and parts[1] in ORDER else None


def test_layers_only_import_downwards():
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).parts
        own = rel[0] if rel[0] in ORDER else None
        for mod in imports_of(path):
            target = layer_of(mod)
            if own and target and ORDER.index(target) > ORDER.index(own):
                bad.append(f"{path.relative_to(PKG)} imports {mod}")
            if own != "cli" and mod.split(".")[0] in UI:
                bad.append(f"{path.relative_to(PKG)} imports {mod} (only cli/ may)")
        if own == "engine":
            text = path.read_text()
            if "open(" in text.replace("np.memmap", "") and "def open" not in text:
                bad.append(f"{path.relative_to(PKG)} opens files (engine kernels do no I/O)")
    assert not bad, "\n".join(bad)


def test_package_root_never_imports_cli():
    assert not any(m.startswith("tidepool_cli.cli") for m in imports_of(PKG / "__init__.py"))
