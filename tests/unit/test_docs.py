"""The README's configuration table names every setting the platform reads."""

from pathlib import Path

from services.common.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented():
    missing = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in README]
    assert not missing, f"document these settings in README.md: {missing}"


def test_readme_opens_with_the_two_commands():
    head = README.split("## ", 1)[0]
    assert "make run" in head and "make test" in head
