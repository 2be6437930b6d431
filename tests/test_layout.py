"""The package's layout is checked, not claimed: import layers and cycles (import-linter), private names, module
sizes, and no unpickling anywhere."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import transferlab

from .conftest import REPO

SRC = Path(transferlab.__file__).parent
MODULES = sorted(SRC.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_import_layers_and_no_cycles():
    """pyproject.toml's import-linter contracts: stages import only downward, siblings on one layer stay apart,
    private modules stay in their package, and no sibling modules import each other in a cycle."""
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True) == 0


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract is not vacuous: a head that imports the pipeline (an upward import and a cycle) fails it."""
    copy = tmp_path / "src"
    shutil.copytree(SRC, copy / "transferlab", ignore=shutil.ignore_patterns("__pycache__", "static"))
    heads = copy / "transferlab" / "heads.py"
    heads.write_text(heads.read_text() + "\nfrom . import pipeline  # noqa: E402\n")
    config = tmp_path / "pyproject.toml"
    config.write_text((REPO / "pyproject.toml").read_text())
    check = f"from importlinter.cli import lint_imports; raise SystemExit(lint_imports({str(config)!r}, no_cache=True))"
    proc = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        env={"PYTHONPATH": str(copy), "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "transferlab.heads -> transferlab.pipeline" in proc.stdout


def _private_imports(path: Path) -> list[str]:
    """``from module import _name`` where the module is another module of the package."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = package
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        module = f"{base}.{node.module}" if node.level and node.module else (node.module if not node.level else base)
        if not (module or "").startswith("transferlab") or module == here:
            continue
        for alias in node.names:
            own_module = module == package and (SRC.parent / Path(*module.split("."), f"{alias.name}.py")).exists()
            if alias.name.startswith("_") and not own_module:  # a private module of one's own package is fine
                found.append(f"{here}: from {module} import {alias.name}")
    return found


def test_no_module_imports_a_private_name_of_another():
    bad = [line for path in MODULES for line in _private_imports(path) if not line.endswith("__version__")]
    assert bad == []


def test_no_module_is_over_500_lines():
    sizes = {_module_name(p): len(p.read_text().splitlines()) for p in MODULES}
    assert {m: n for m, n in sizes.items() if n > 500} == {}


@pytest.mark.parametrize(("module", "cls"), [("pipeline", "Classifier"), ("facebag", "FaceBagClassifier")])
def test_the_pipeline_and_the_face_bag_estimator_read_in_one_sitting(module, cls):
    tree = ast.parse((SRC / f"{module}.py").read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
    assert node.end_lineno - node.lineno < 300


def test_nothing_can_unpickle():
    """ruff's bandit rules for pickle (S301 loads, S403 import) find nothing; np.load and torch.load calls are
    restricted to plain arrays / tensors."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is installed with the test requirements"
    proc = subprocess.run(
        [ruff, "check", "--preview", "--select", "S301,S403", "--no-cache", str(SRC)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = getattr(node.func.value, "id", "")
                kw = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                if owner == "np":
                    assert kw.get("allow_pickle") is False, f"{path}:{node.lineno}"
                if owner == "torch":
                    assert kw.get("weights_only") is True, f"{path}:{node.lineno}"


# "Is this a face model?" asked outside the model's kind: the fork the kinds replaced (26 lines in 9 modules before).
FORK = re.compile(
    r"embeds_faces|is_face_model|isinstance\([^)]*(FaceBagClassifier|FaceBackbone|ImageBackbone)"
    r"|\.kind\s*[!=]=|kind_of\([^)]*\)\.name|\bkind\.name\s*[!=]="
)


def test_no_stage_asks_which_kind_of_model_it_has():
    """What differs between face models and whole-image models is asked of the model's kind (``transferlab.kinds``):
    outside ``backbones/`` and ``kinds/`` at most 3 lines branch on the kind, each saying why in a comment."""
    found = []
    for path in MODULES:
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("backbones", "kinds"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if FORK.search(line.split("#")[0]):
                found.append((f"{rel}:{n}", "#" in line))
    assert len(found) <= 3, found
    assert all(commented for _, commented in found), found


def test_the_fork_check_finds_a_fork():
    """The check is not vacuous: the branch it replaced is found."""
    assert FORK.search("        if opts.embeds_faces:")
    assert FORK.search("    bag = clf.head_ if isinstance(clf.head_, FaceBagClassifier) else None")
    assert FORK.search('    if get_backbone_cfg(name).kind == "faces":')


def test_architecture_names_every_module():
    """ARCHITECTURE.md names every module of the package (``kinds/faces.py``) and every subpackage (``kinds/``)."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    missing = []
    for path in MODULES:
        rel = path.relative_to(SRC)
        name = f"{rel.parent.as_posix()}/" if rel.name == "__init__.py" else rel.as_posix()
        if name not in ("./",) and f"`{name}`" not in text:
            missing.append(name)
    assert missing == []
