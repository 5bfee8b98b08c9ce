"""The README stays true: it opens with the two commands and documents every setting."""

from __future__ import annotations

from pathlib import Path

from stripesync.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_opens_with_make_dev_and_make_test() -> None:
    first_block = README.split("```")[1]
    assert "make dev" in first_block and "make test" in first_block


def test_readme_configuration_table_names_every_setting() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [
        f"STRIPESYNC_{name.upper()}"
        for name in Settings.model_fields
        if f"`STRIPESYNC_{name.upper()}`" not in table
    ]
    assert not missing, f"add to README's configuration table: {', '.join(missing)}"
