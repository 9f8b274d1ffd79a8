"""Compile the pipeline and its components to the YAML a platform team uploads in the Kubeflow UI.

    rstar compile                  # pipelines/*.yaml and components/<name>/component.yaml
    rstar compile --check          # exit 1 if the checked-in YAML is stale (CI and the tests do this)

The YAML is generated, never edited by hand; tests recompile and diff it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kfp import compiler

PIPELINE_FILE = Path("pipelines") / "self_evolution.yaml"
NIGHTLY_FILE = Path("pipelines") / "nightly_re_evolution.yaml"
COMPONENTS_DIR = Path("components")


def compile_all(root: str | Path) -> list[Path]:
    """Write every compiled file under `root`; returns their paths."""
    from rstar_math.orchestration.components import COMPONENTS
    from rstar_math.orchestration.pipeline import nightly_re_evolution, self_evolution

    root = Path(root)
    written = []
    for pipeline, file in ((self_evolution, PIPELINE_FILE), (nightly_re_evolution, NIGHTLY_FILE)):
        target = root / file
        target.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(pipeline, str(target))
        written.append(target)
    for name, component in COMPONENTS.items():
        target = root / COMPONENTS_DIR / name / "component.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(component, str(target))
        written.append(target)
    return written


def stale_files(root: str | Path) -> list[str]:
    """Compiled files under `root` that differ from a fresh compilation (or are missing)."""
    root = Path(root)
    with tempfile.TemporaryDirectory() as fresh:
        stale = []
        for path in compile_all(fresh):
            relative = path.relative_to(fresh)
            checked_in = root / relative
            if not checked_in.exists() or checked_in.read_text() != path.read_text():
                stale.append(str(relative))
        return stale
