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
        "import advisor.resources as r, advisor.hardware as h; "
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
