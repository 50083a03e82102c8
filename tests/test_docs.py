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


def test_readme_defaults_match_the_config():
    import yaml
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "config.yaml"))
    readme = (ROOT / "README.md").read_text()
    for key in RULES:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{key}` |"))
        documented = yaml.safe_load(row.split("|")[2].strip().strip("`"))
        value = config
        for part in key.split("."):
            value = value[part]
        assert documented == value, f"README says {key} defaults to {documented!r}, conf/config.yaml to {value!r}"
