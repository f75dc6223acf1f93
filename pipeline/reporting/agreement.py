"""Do two runs of the claims audit agree? The acceptance test of the three-way verdict rule on real reruns.

Two runs of the same experiment (another machine, other base seeds, another day) may move a verdict to or
from *inconclusive*: that is what the rule is for. They must never put one claim *reproduced* in one run and
*contradicted* in the other. :func:`compare_audits` takes two ``reports/claims.json`` (as the report stage
writes them) and lists, per claim, both verdicts and both deciding intervals, with the opposite-verdict
claims called out. Torch-free; ``scripts/compare_claims.py`` is its command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.reporting.verdicts import CONTRADICTED, REPRODUCED

OPPOSITE = frozenset({REPRODUCED, CONTRADICTED})


@dataclass(frozen=True)
class ClaimPair:
    """One claim in both audits (a verdict is ``None`` where that audit lacks the claim)."""

    id: str
    text: str
    verdict_a: str | None
    verdict_b: str | None
    interval_a: str
    interval_b: str

    @property
    def opposite(self) -> bool:
        """Reproduced in one run and contradicted in the other: what the rule must never produce."""
        return {self.verdict_a, self.verdict_b} == OPPOSITE

    @property
    def moved(self) -> bool:
        return self.verdict_a != self.verdict_b


def load_audit(path: Path) -> dict[str, dict[str, Any]]:
    """The claims of one ``claims.json``, by id; a clear error if the file is not an audit."""
    try:
        doc = json.loads(Path(path).read_text())
        claims = doc["claims"]
        return {c["id"]: c for c in claims}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such claims audit (the report stage writes reports/claims.json)") from None
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a claims audit written by the report stage "
                         f"(expected a JSON object with a 'claims' list of objects with 'id'): {e}") from None


def compare_audits(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[ClaimPair]:
    """Every claim of either audit, in ``a``'s order, then ``b``'s extra claims."""
    ids = list(a) + [i for i in b if i not in a]
    out = []
    for i in ids:
        ca, cb = a.get(i, {}), b.get(i, {})
        out.append(ClaimPair(i, ca.get("text") or cb.get("text", ""), ca.get("verdict"), cb.get("verdict"),
                             str(ca.get("interval", "")), str(cb.get("interval", ""))))
    return out


def summary(pairs: list[ClaimPair]) -> dict[str, Any]:
    """Counts: claims in both, identical verdicts, moves (any), opposite verdicts (must be 0), and the ids."""
    both = [p for p in pairs if p.verdict_a is not None and p.verdict_b is not None]
    return {"claims_in_both": len(both), "same_verdict": sum(not p.moved for p in both),
            "moved": [p.id for p in both if p.moved], "opposite": [p.id for p in both if p.opposite],
            "only_in_one": [p.id for p in pairs if p not in both]}


def markdown(pairs: list[ClaimPair], label_a: str = "run A", label_b: str = "run B") -> str:
    """A table of the claims whose verdict moved, and the summary line."""
    s = summary(pairs)
    lines = [f"{s['same_verdict']} of {s['claims_in_both']} claims have the same verdict in {label_a} and "
             f"{label_b}; {len(s['moved'])} moved; **{len(s['opposite'])} opposite** "
             "(reproduced in one, contradicted in the other).", "",
             f"| claim | {label_a} | {label_b} | interval {label_a} | interval {label_b} |", "|---|---|---|---|---|"]
    for p in pairs:
        if p.moved:
            flag = " **(opposite)**" if p.opposite else ""
            lines.append(f"| {p.id}{flag} | {p.verdict_a} | {p.verdict_b} | {p.interval_a} | {p.interval_b} |")
    return "\n".join(lines) + "\n"
