import ast
from pathlib import Path

import mobilenets

PACKAGE = Path(mobilenets.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_the_tables_and_their_resolution_need_no_torch():
    """A reader (or a tool) can load the architecture tables without a deep-learning stack."""
    files = {"tables": PACKAGE / "models" / "tables.py", "specs": PACKAGE / "models" / "specs.py",
             "errors": PACKAGE / "core" / "errors.py"}
    allowed_package_imports = {"specs": {".tables", "..core.errors"}, "tables": set(), "errors": set()}
    for name, path in files.items():
        imports = _imports(path)
        assert not any(i.split(".")[0] in ("torch", "torchvision", "numpy") for i in imports), (name, imports)
        assert {i for i in imports if i.startswith(".")} <= allowed_package_imports[name], (name, imports)
