"""pipeline.reporting.agreement: comparing two claims audits (the verdict rule's acceptance test on reruns)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.reporting.agreement import compare_audits, load_audit, markdown, summary

ROOT = Path(__file__).resolve().parent.parent


def _audit(path: Path, verdicts: dict[str, str]) -> Path:
    path.write_text(json.dumps({"summary": "", "claims": [
        {"id": k, "text": f"claim {k}", "verdict": v, "interval": f"{len(k)} [0, 1]"} for k, v in verdicts.items()]}))
    return path


def test_moves_and_opposites_are_told_apart(tmp_path):
    a = _audit(tmp_path / "a.json", {"x": "reproduced", "y": "inconclusive", "z": "contradicted", "w": "reproduced"})
    b = _audit(tmp_path / "b.json", {"x": "inconclusive", "y": "inconclusive", "z": "reproduced", "v": "reproduced"})
    pairs = compare_audits(load_audit(a), load_audit(b))
    s = summary(pairs)
    assert s == {"claims_in_both": 3, "same_verdict": 1, "moved": ["x", "z"], "opposite": ["z"],
                 "only_in_one": ["w", "v"]}
    md = markdown(pairs)
    assert "**1 opposite**" in md and "| z **(opposite)** | contradicted | reproduced |" in md
    assert "| y " not in md  # unchanged verdicts are not listed


def test_cli_exit_status_and_bad_input(tmp_path):
    a = _audit(tmp_path / "a.json", {"x": "reproduced"})
    same = subprocess.run([sys.executable, str(ROOT / "scripts/compare_claims.py"), str(a), str(a)],
                          capture_output=True, text=True)
    assert same.returncode == 0 and "1 of 1 claims have the same verdict" in same.stdout
    b = _audit(tmp_path / "b.json", {"x": "contradicted"})
    assert subprocess.run([sys.executable, str(ROOT / "scripts/compare_claims.py"), str(a), str(b)],
                          capture_output=True).returncode == 1
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a claims audit"):
        load_audit(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="no such claims audit"):
        load_audit(tmp_path / "missing.json")
