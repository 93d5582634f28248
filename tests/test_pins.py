"""constraints.txt is what is installed and tested, and pyproject's bounds admit it."""

import re
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in (line.split("#")[0].strip() for line in lines) if line)


def test_every_pinned_version_is_the_installed_one():
    mismatched = {}
    for name, pinned in pins().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            mismatched[name] = (pinned, installed)
    assert not mismatched, f"constraints.txt pins differ from the installed versions (run make install): {mismatched}"


def test_pyproject_bounds_admit_every_pin():
    declared = [Requirement(re.sub(r";.*", "", r)) for r in requires("sasa-lightning")]
    for requirement in declared:
        pinned = pins().get(requirement.name)
        if pinned is not None:
            assert requirement.specifier.contains(pinned), f"pyproject's {requirement} excludes the pinned {pinned}"
    assert {"lightning", "ffcv", "deepspeed", "jsonargparse", "torchmetrics", "numba", "faster-coco-eval", "timm"} <= set(pins())
