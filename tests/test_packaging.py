"""The wheel carries rules/ and profiles/, and an installed package finds them from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_ships_rules_and_profiles(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n for n in names if n.startswith("advisor/_data/")}
    expected = {
        "advisor/_data/" + str(p.relative_to(ROOT))
        for folder in ("rules", "profiles")
        for p in (ROOT / folder).rglob("*.yaml")
    }
    assert expected, "no YAML found in the checkout"
    assert expected <= shipped
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)


def test_installed_wheel_finds_its_data_from_another_folder(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import advisor.data.resources as r, advisor.hardware.profiles as h; "
        f"assert str(r.rules_dir()).startswith({str(site)!r}), r.rules_dir(); "
        "print(len(h.load_hardware_profiles()))"
    )
    # The unpacked wheel first on the path; its dependencies from this interpreter.
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 14


def test_wheel_ships_the_export_templates(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = ROOT / "advisor" / "export" / "templates"
    expected = {str(p.relative_to(ROOT)) for p in templates.glob("*.py.tmpl")}
    assert len(expected) >= 11, "the snippet's templates are missing from the checkout"
    assert expected <= names


def test_installed_wheel_writes_the_torch_snippet_from_another_folder(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import advisor.export as e; from advisor.config import TrainingConfig; "
        f"assert e.__file__.startswith({str(site)!r}), e.__file__; "
        "print(e.emit_torch(TrainingConfig(task='lora', optimizer='adamw')))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    # The header, a plan-dependent template (LoRA) and the demo all came from package data.
    for line in ('"""Training setup emitted by optadvise', "class LoRALinear", "def main("):
        assert line in out.stdout


# The engines whose internals the tests reach into: a new release must not reach a fresh
# clone before the tests have run against it.
_ENGINES = {"accelerate", "deepspeed", "transformers", "bitsandbytes", "pytorch-optimizer"}


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name.lower().replace("_", "-")


def test_the_constraints_pin_every_dev_requirement_inside_its_range() -> None:
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    pins: dict[str, str] = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            pins[_name(name)] = version
    assert "torch" not in pins, "torch is pinned by the Makefile (TORCH), not the constraints"
    checked = 0
    for req in dev:
        name = _name(str(req))
        assert name in pins, f"{name} is a dev requirement without a pin in .ci/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])
        if name in _ENGINES:
            assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), (
                f"{name} needs an upper bound in pyproject.toml's dev extra"
            )
        checked += 1
    assert checked == len(dev) >= len(_ENGINES)
    for req in project["dependencies"]:
        name = _name(req)
        if name != "torch":
            assert Requirement(req).specifier.contains(pins[name], prereleases=True), name


def test_the_installed_engines_are_the_pinned_ones() -> None:
    from importlib.metadata import PackageNotFoundError, version

    pins = dict(
        line.split("==", 1)
        for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    pins = {_name(k): v for k, v in pins.items()}
    for engine in sorted(_ENGINES):
        try:
            installed = version(engine)
        except PackageNotFoundError:
            continue  # a user's install without the dev extra: nothing to compare
        assert installed == pins[engine], (
            f"{engine} {installed} is installed but the tests were pinned to {pins[engine]}: "
            "run `make clean install` (or move the pin after running the suite with it)"
        )
