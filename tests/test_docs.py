"""The README documents every config key, and opens with the two commands."""
from __future__ import annotations

from conftest import ROOT

from dqt.config import RULES


def test_readme_table_lists_every_config_key():
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in RULES if f"| `{key}` |" not in readme]
    assert not missing, f"README config table lacks {missing}"


def test_readme_opens_with_make_run_and_make_test():
    first_lines = [line.split("#")[0].strip() for line in (ROOT / "README.md").read_text().splitlines()[:4]]
    assert [line for line in first_lines if line.startswith("make")] == ["make run", "make test"]
