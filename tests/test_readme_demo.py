"""README's demo tables come from the demo's own output and match a fresh run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("readme_demo", ROOT / "scripts/readme_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_blocks_are_replaced_in_place_and_parsed() -> None:
    rd = _script()
    text = "intro\n<!-- demo-table:x -->\nold\n<!-- /demo-table:x -->\noutro\n"
    table = "| run | method | model | L1 | L2 | L3 | L4 | all | s/pair |\n|---|---|---|---|---|---|---|---|---|\n| a | fft | raw | 1.000 | 0.500 | 0.000 | 0.000 | 0.375 | 0.1 |\n"
    new = rd.replace_block(text, "x", table)
    assert new.startswith("intro\n") and new.endswith("outro\n") and "old" not in new
    assert rd.read_block(new, "x").strip() == table.strip()
    assert rd.success_columns(new) == [
        ("a", "fft", "raw", "1.000", "0.500", "0.000", "0.000", "0.375")
    ]
    with pytest.raises(ValueError, match="demo-table:y"):
        rd.replace_block(text, "y", table)


@pytest.mark.slow
def test_readme_sentinel2_table_matches_a_fresh_demo(tmp_path) -> None:
    from comir.demo import run_demo

    rd = _script()
    shipped = rd.success_columns(rd.read_block((ROOT / "README.md").read_text(), "sentinel2"))
    run_demo(tmp_path / "demo", sample="sentinel2", workers=2, progress=False)
    fresh = rd.success_columns((tmp_path / "demo" / "compare.md").read_text())
    assert fresh == shipped, "README's demo table is stale: run python scripts/readme_demo.py"
