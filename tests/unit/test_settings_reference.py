"""docs/configuration.md is generated from the settings model: it must name every setting as the
code has it now (tools/settings_reference.py)."""

from __future__ import annotations

from config.settings import Settings, variable
from tools import settings_reference


def test_the_configuration_reference_is_current() -> None:
    assert settings_reference.main(["--check"]) == 0, "run: python -m tools.settings_reference"


def test_every_setting_has_a_row_with_its_default_and_a_description() -> None:
    text = settings_reference.render()
    for name, info in Settings.model_fields.items():
        [row] = [line for line in text.splitlines() if line.startswith(f"| `{variable(name)}` |")]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[3], f"{variable(name)} has no comment in config/settings.py"
        if info.default is not None:
            assert str(info.default).rstrip("0").rstrip(".") in cells[1].replace("`", "")


def test_bounds_come_from_the_model() -> None:
    text = settings_reference.render()
    [row] = [line for line in text.splitlines() if "ARCHIVER_LEASE_TIMEOUT" in line]
    assert "≥ 3" in row and "≤ 600" in row
