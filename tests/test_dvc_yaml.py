"""dvc.yaml lists every project file a stage's code imports, and stages stay independent."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "stages"


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The project file of a dotted module name, or None when it is not ours."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    path = root / Path(*name.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports anywhere in its body (deferred imports inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from stages import model` imports the module stages.model
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_closure(module: str, root: Path = ROOT) -> set[Path]:
    """The project files that running ``python -m module`` can execute, relative to ``root``."""
    start = module_file(module, root)
    assert start is not None, f"{module} is not a project module"
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
                dep = module_file(".".join(parts[:i]), root)
                if dep is not None:
                    todo.append(dep)
    return {p.relative_to(root) for p in seen}


def stage_commands(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, tuple[str, list[str]]]:
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        match = re.fullmatch(r"python -m ([\w.]+)(?: .*)?", stage["cmd"])
        assert match, f"stage {name}: cmd {stage['cmd']!r} is not `python -m <module>`"
        deps = [next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps", [])]
        out[name] = (match.group(1), deps)
    return out


def missing_deps(dvc_yaml: Path = ROOT / "dvc.yaml", root: Path = ROOT) -> dict[str, list[str]]:
    """Per stage, the project files its command imports that its ``deps`` do not list."""
    missing = {}
    for name, (module, deps) in stage_commands(dvc_yaml).items():
        listed = {Path(d) for d in deps}
        needed = project_closure(module, root) - {Path(PACKAGE, "__init__.py")}

        absent = sorted(str(p) for p in needed if not any(p == d or d in p.parents for d in listed))
        if absent:
            missing[name] = absent
    return missing


def test_every_stage_lists_the_project_files_it_imports():
    assert missing_deps() == {}, "add these to the stages' deps in dvc.yaml"


def test_a_removed_dependency_is_caught(tmp_path):
    """The check itself can fail: drop one listed file from a stage and it must be reported."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    deps = spec["stages"]["train"]["deps"]
    deps.remove("stages/model.py")
    edited = tmp_path / "dvc.yaml"
    edited.write_text(yaml.safe_dump(spec))
    assert missing_deps(edited) == {"train": ["stages/model.py"]}


def test_deferred_imports_count(tmp_path):
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from stages import b  # deferred\n")
    (pkg / "b.py").write_text("import stages.c\n")
    (pkg / "c.py").write_text("import numpy\n")
    assert project_closure("stages.a", tmp_path) == {
        Path("stages/__init__.py"),
        Path("stages/a.py"),
        Path("stages/b.py"),
        Path("stages/c.py"),
    }


@pytest.mark.parametrize("stage", sorted(stage_commands()))
def test_stage_modules_do_not_import_each_other(stage):
    files = {module_file(module).relative_to(ROOT) for module, _ in stage_commands().values()}
    module, _ = stage_commands()[stage]
    others = files - {module_file(module).relative_to(ROOT)}
    reached = project_closure(module) & others  # directly or through a helper
    assert not reached, f"{module} imports another stage: {sorted(map(str, reached))}"


def test_dvc_reads_its_yaml_files_with_the_c_parser():
    # ruamel.yaml.clib is in pyproject.toml for this: in pure Python, DVC's parsing
    # of dvc.yaml, dvc.lock and params.yaml costs 0.4 s of a 2.4 s no-op `dvc exp run`.
    from ruamel.yaml.main import CParser

    assert CParser is not None
