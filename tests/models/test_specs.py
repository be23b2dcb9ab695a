import ast
from pathlib import Path

import pytest

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


def test_v1_table4_and_table5_variants():
    from mobilenets.core.errors import MobileNetsError
    from mobilenets.models.specs import ConvSpec, build_arch
    from mobilenets.models.tables import V1_BLOCKS, V1_SHALLOW_BLOCKS
    # Table 5: Table 1 without the five separable layers at 14×14×512 (stride 1, 512 out).
    without_five = list(V1_BLOCKS)
    for _ in range(5):
        without_five.remove((1, 512))
    assert V1_SHALLOW_BLOCKS == without_five
    shallow = build_arch("mobilenet_v1", shallow=True)
    assert len(shallow.blocks) == 8 and shallow.total_stride == 32
    full = build_arch("mobilenet_v1", full_conv=True)
    assert all(isinstance(b, ConvSpec) and b.kernel == 3 for b in full.blocks)
    assert [b.out_ch for b in full.blocks] == [c for _, c in V1_BLOCKS]
    with pytest.raises(MobileNetsError, match="MobileNetV1's Table 4 and 5"):
        build_arch("mobilenet_v2", shallow=True)
    with pytest.raises(MobileNetsError, match="no projection nor shortcut"):
        build_arch("mobilenet_v1", full_conv=True, proj_act="relu6")
