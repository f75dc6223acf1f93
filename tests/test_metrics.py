"""faenet.metrics on hand-computed cases, and the callers that must use it (training, report, claims)."""

import math

import pytest
import torch

from faenet.metrics import (
    EWT_THRESHOLD_EV,
    energy_mae,
    energy_within_threshold,
    force_mae,
    mean_relative_improvement,
    relative_improvement,
)
from faenet.training import mae_metrics

F64 = torch.float64


def test_energy_mae_and_ewt_by_hand():
    # errors 0.01, 0.03, 0.005, 0.5 eV: MAE 0.545 / 4 = 0.13625; 2 of 4 strictly below 0.02 eV
    pred, true = torch.tensor([1.01, 2.03, -0.005, 0.5], dtype=F64), torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=F64)
    assert energy_mae(pred, true) == pytest.approx(0.13625, abs=1e-12)
    assert energy_within_threshold(pred, true) == 0.5
    assert EWT_THRESHOLD_EV == 0.02
    # strict: an error of exactly the threshold is not "within"; a wider threshold counts it
    at = torch.tensor([0.25], dtype=F64)
    assert energy_within_threshold(at, torch.zeros(1, dtype=F64), 0.25) == 0.0
    assert energy_within_threshold(pred, true, threshold=0.04) == 0.75


def test_force_mae_over_free_atoms_and_components():
    pred = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [9.0, 9.0, 9.0]], dtype=F64)
    true = torch.zeros(3, 3, dtype=F64)
    free = torch.tensor([True, True, False])
    assert force_mae(pred, true, free) == pytest.approx(3.0 / 6)  # the fixed atom's 27 eV/Å ignored
    assert force_mae(pred, true) == pytest.approx(30.0 / 9)


def test_mae_metrics_is_the_metric_functions():
    pred = {"energy": torch.tensor([1.01, 2.03]), "y": torch.tensor([1.0, 2.0]),
            "forces": torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.0, 0.4]]), "force": torch.zeros(2, 3),
            "free": torch.tensor([True, False])}
    m = mae_metrics(pred)
    assert m == {"energy_mae": energy_mae(pred["energy"], pred["y"]),
                 "energy_ewt": energy_within_threshold(pred["energy"], pred["y"]),
                 "force_mae": force_mae(pred["forces"], pred["force"], pred["free"])}
    assert m["energy_ewt"] == 0.5 and m["force_mae"] == pytest.approx(0.1 / 3)


def test_eq11_on_two_properties_by_hand():
    # SchNet 2.0 and 4.0, model 1.0 and 3.0: improvements 0.5 and 0.25 -> mean 0.375, population std 0.125
    schnet = {"a": 2.0, "b": 4.0, "r2": 1.0, "zero": 0.0}
    r = mean_relative_improvement({"a": 1.0, "b": 3.0, "r2": 100.0, "zero": 1.0, "only_model": 1.0}, schnet,
                                  excluded=("r2",))
    assert r == {"per_property": {"a": 0.5, "b": 0.25}, "mean": 0.375, "std": 0.125, "n": 2}
    with_r2 = mean_relative_improvement({"a": 1.0, "b": 3.0, "r2": 100.0}, schnet)
    assert with_r2["n"] == 3 and with_r2["per_property"]["r2"] == -99.0
    assert mean_relative_improvement({"a": None}, schnet) == {"per_property": {}, "mean": None, "std": None, "n": 0}
    assert relative_improvement(0.75, 1.0) == 0.25 and relative_improvement(2.0, 1.0) == -1.0


def test_eq11_on_the_paper_table8():
    """Eq. (11) with R² excluded on the paper's own Table 8 MAEs (what the report recomputes and the claim
    ``qm9-table8-internal-consistency`` compares with the printed 0.395 ± 0.212): 11 properties, 0.432 ± 0.172."""
    from pipeline.reporting.table_writer import paper_row
    from pipeline.reporting.tables import QM9_EXCLUDED

    rec = mean_relative_improvement(paper_row("table8", "faenet")["mae"], paper_row("table8", "schnet")["mae"],
                                    QM9_EXCLUDED)
    assert QM9_EXCLUDED == ("r2",) and rec["n"] == 11
    assert math.isclose(rec["mean"], 0.43169, abs_tol=1e-5) and math.isclose(rec["std"], 0.17168, abs_tol=1e-5)
