"""mypy over services/ and gateway/ with the project's configuration (`[tool.mypy]` in
pyproject.toml: strict on the kernel, the baseline elsewhere) reports no error. `make
lint` runs the same check; this keeps it in `make test`, which is what CI runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_reports_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # the configuration's `files` are relative to the repository; the cache (.mypy_cache)
    # stays there too, so a run after the first only checks what changed
    monkeypatch.chdir(ROOT)
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml")])
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 0 and not errors, "mypy:\n" + "\n".join(
        (errors or out.splitlines() or err.splitlines())[:20]
    )
