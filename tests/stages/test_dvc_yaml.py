"""dvc.yaml lists exactly the project files each stage's outputs are computed from, and stages stay independent.

Every project module a stage's command can import is a dep of that stage
(else an edit would not re-run it), and nothing else is (else an edit would
re-run it for nothing). Package markers (an ``__init__.py`` holding only a
docstring) cannot change an output and are left out; so is ``stages/__init__.py``,
whose process helpers (``finish``, ``leave_out``) never touch an output.
``rerun_table`` turns the same facts into the table docs/pipeline.md shows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
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
            # `from stages.lib import model` imports the module stages.lib.model
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


# Project files a stage reads as data rather than importing: publish logs the served model's code.
READ_AS_DATA = {"publish": {Path("stages/serving/mlflow_model.py")}}


def is_marker(path: Path) -> bool:
    """A package's ``__init__.py`` that holds nothing but a docstring."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body
    )


def needed_files(module: str, root: Path = ROOT, stage: str = "") -> set[Path]:
    """The project files an edit to which must re-run the stage whose command runs ``module``."""
    closure = project_closure(module, root) | READ_AS_DATA.get(stage, set())
    return {p for p in closure if p != Path(PACKAGE, "__init__.py") and not is_marker(root / p)}


def missing_deps(dvc_yaml: Path = ROOT / "dvc.yaml", root: Path = ROOT) -> dict[str, list[str]]:
    """Per stage, the project files its command imports that its ``deps`` do not list."""
    missing = {}
    for name, (module, deps) in stage_commands(dvc_yaml).items():
        listed = {Path(d) for d in deps}
        absent = sorted(
            str(p) for p in needed_files(module, root, name) if not any(p == d or d in p.parents for d in listed)
        )
        if absent:
            missing[name] = absent
    return missing


def unused_deps(dvc_yaml: Path = ROOT / "dvc.yaml", root: Path = ROOT) -> dict[str, list[str]]:
    """Per stage, the project code its ``deps`` list that its outputs are not computed from."""
    unused = {}
    for name, (module, deps) in stage_commands(dvc_yaml).items():
        code = {Path(d) for d in deps if d.split("/")[0] == PACKAGE}
        extra = sorted(str(d) for d in code - needed_files(module, root, name))
        if extra:
            unused[name] = extra
    return unused


def rerun_table(dvc_yaml: Path = ROOT / "dvc.yaml", root: Path = ROOT) -> str:
    """A Markdown table: for each project module, the stages an edit to it re-runs."""
    stages = stage_commands(dvc_yaml)
    reruns: dict[Path, list[str]] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        rel = path.relative_to(root)
        if rel == Path(PACKAGE, "__init__.py") or is_marker(path):
            continue
        reruns[rel] = [
            name for name, (_, deps) in stages.items() if any(rel == Path(d) or Path(d) in rel.parents for d in deps)
        ]
    rows = ["| module | an edit re-runs |", "|---|---|"]
    rows += [
        f"| `{p.as_posix()}` | {', '.join(s) if s else 'nothing (not part of the pipeline)'} |"
        for p, s in reruns.items()
    ]
    return "\n".join(rows)


def test_every_stage_lists_the_project_files_it_imports():
    assert missing_deps() == {}, "add these to the stages' deps in dvc.yaml"


def test_no_stage_lists_code_its_outputs_do_not_use():
    assert unused_deps() == {}, "remove these from the stages' deps in dvc.yaml: an edit there would re-run them"


def test_an_unused_dependency_is_caught(tmp_path):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    spec["stages"]["train"]["deps"].append("stages/lib/tracking.py")
    edited = tmp_path / "dvc.yaml"
    edited.write_text(yaml.safe_dump(spec))
    assert unused_deps(edited) == {"train": ["stages/lib/tracking.py"]}


def test_publish_reads_the_served_model_code_it_declares():
    from stages.lib import identity

    assert {p.relative_to(ROOT) for p in (identity.SERVING_CODE, *identity.SERVING_LIBRARY)} >= READ_AS_DATA["publish"]


def test_an_edit_to_the_tracking_code_re_runs_only_publish():
    table = rerun_table()
    assert "| `stages/lib/tracking.py` | publish |" in table
    assert "| `stages/params/evaluate.py` | fetch, evaluate, publish |" in table  # fetch checks every section


def test_docs_show_the_rerun_table_as_computed():
    page = (ROOT / "docs" / "pipeline.md").read_text()
    start, end = "<!-- rerun-table:start -->\n", "\n<!-- rerun-table:end -->"
    assert start in page and end in page, "docs/pipeline.md lacks the rerun-table markers"
    shown = page.split(start, 1)[1].split(end, 1)[0]
    assert shown == rerun_table(), "docs/pipeline.md's table is stale; replace it with:\n" + rerun_table()


def test_a_removed_dependency_is_caught(tmp_path):
    """The check itself can fail: drop one listed file from a stage and it must be reported."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    deps = spec["stages"]["train"]["deps"]
    deps.remove("stages/lib/model.py")
    edited = tmp_path / "dvc.yaml"
    edited.write_text(yaml.safe_dump(spec))
    assert missing_deps(edited) == {"train": ["stages/lib/model.py"]}


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
