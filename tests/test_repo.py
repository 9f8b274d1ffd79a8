"""Repository contracts: CI runs exactly the README's test command; the layout is what the README says."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci_test_command() -> str:
    """What .ci/run extracts from README.md, by running its own extraction line."""
    script = (ROOT / ".ci" / "run").read_text()
    [line] = [l for l in script.splitlines() if l.startswith("test_command=")]
    return subprocess.run(["bash", "-c", f"{line}; printf %s \"$test_command\""], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = _ci_test_command()
    assert command == "python -m pytest -q"
    assert f"<!-- test-command -->\n```\n{command}\n```" in readme


def test_top_level_layout_exists():
    for name in ("README.md", "pyproject.toml", "components", "pipelines", "images", "helm", "tests",
                 "manifests", "benchmarks", "src/rstar_math"):
        assert (ROOT / name).exists(), name
