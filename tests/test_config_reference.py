"""docs/config-keys.md is rendered from the typed config: it must match what the generator renders now, and every key
must carry its help line (a key without one would be a blank row, and a page that drifts would mislead)."""

import subprocess
import sys

from embinject import config_reference

from .conftest import ROOT


def test_every_config_key_has_a_help_line():
    assert config_reference.missing_help() == []


def test_the_config_key_page_is_current():
    page = ROOT / "docs" / "config-keys.md"
    assert page.read_text(encoding="utf-8") == config_reference.render(), (
        "docs/config-keys.md is stale: run python -m embinject.config_reference (make docs) and commit it"
    )


def test_the_page_lists_every_key_once():
    text = config_reference.render()
    for _, cls, prefix, _ in config_reference.SECTIONS:
        for key, _, _ in config_reference.keys(cls, prefix):
            assert text.count(f"| `{key}` |") == 1, key


def test_check_flags_a_stale_page(tmp_path):
    page = tmp_path / "config-keys.md"
    page.write_text(config_reference.render().replace("AdamW learning rate", "the learning rate"), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "embinject.config_reference", "--check", "--output", str(page)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: {page} is stale"), proc.stderr
    assert (
        subprocess.run(
            [sys.executable, "-m", "embinject.config_reference", "--output", str(page)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        ).returncode
        == 0
    )
    assert page.read_text(encoding="utf-8") == config_reference.render()
