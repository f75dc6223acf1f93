"""GemNet-T / GemNet-Q on the expressivity pairs: structural facts computed, and the rows built and trained."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.registry import build_model
from faenet.expressivity import _pair, pair_by_name
from faenet.expressivity_runs import model_facts, plan, run_experiments
from pipeline.config import ExpressivityConfig

SMALL = {"num_spherical": 3, "num_radial": 4, "emb_size_atom": 16, "emb_size_edge": 16, "emb_size_trip": 8,
         "emb_size_rbf": 4, "emb_size_cbf": 4, "emb_size_bil_trip": 8, "num_after_skip": 1, "num_atom": 1,
         "allow_unfitted": True}
QUAD = {"emb_size_quad": 4, "emb_size_sbf": 4, "emb_size_bil_quad": 4, "int_cutoff": 10.0}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    hp = {**SMALL, **(QUAD if name == "gemnet_q" else {}), "cutoff": 10.0, "num_blocks": 1}
    return build_model(name, **hp).double().eval()


def _torsion_pair(phi0: float, phi1: float):
    """A 4-atom chain d-b-a-c (bonds 1.5 Å, bond angles 110°) at dihedrals phi0 / phi1 (degrees), path edges."""
    def chain(phi: float) -> torch.Tensor:
        t, p = math.radians(110.0), math.radians(phi)
        b, a = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.5, 0.0, 0.0])
        d = b + 1.5 * torch.tensor([-math.cos(t), math.sin(t), 0.0])
        c = a + 1.5 * torch.tensor([math.cos(t), math.sin(t) * math.cos(p), math.sin(t) * math.sin(p)])
        return torch.stack([d, b, a, c]).double()
    return _pair("torsion", chain(phi0), chain(phi1), torch.tensor([[0, 1, 2], [1, 2, 3]]), "torsion")


def _gap(model: torch.nn.Module, pair) -> float:
    with torch.no_grad():
        e = model(pair.batch(torch.float64))["energy"]
    return float((e[0] - e[1]).abs())


def test_dihedrals_separate_torsion_isomers_for_gemnet_q_only_and_not_mirror_images():
    torsion, mirror = _torsion_pair(60.0, 120.0), _torsion_pair(60.0, -60.0)
    # Same bonds and bond angles: triplets (GemNet-T) see identical inputs; quadruplets see the dihedral.
    assert _gap(_model("gemnet_t"), torsion) < 1e-12
    assert _gap(_model("gemnet_q"), torsion) > 1e-6
    # GemNet-Q's dihedral is atan2(|r_c x r_d|, r_c . r_d) in [0, pi]: mirror images get the same output.
    assert _gap(_model("gemnet_q"), mirror) < 1e-12


def test_dojo_stars_have_no_quadruplets_and_pair_fits_of_scaling_factors_fail():
    q = _model("gemnet_q")
    for name in ("rotsym_3", "2body", "3body", "4body_chiral", "4body_nonchiral"):
        g, _, _ = q._graph(pair_by_name(name).batch(torch.float64))
        assert g["quad_ca"].numel() == 0, name
    g, _, _ = q._graph(pair_by_name("kchain_4").batch(torch.float64))
    assert g["quad_ca"].numel() > 0
    with pytest.raises(ValueError, match="saw no variance"):
        q.prepare([pair_by_name("3body").batch(torch.float64)])
    with pytest.raises(ValueError, match="saw no variance"):  # equal spoke lengths: zero variance
        _model("gemnet_t").prepare([pair_by_name("2body").batch(torch.float64)])


def test_gemnet_rows_build_and_train():
    cfg = ExpressivityConfig(models=["gemnet_t", "gemnet_q"], n_seeds=1, epochs=2, kchain_layers=[1], folds=[2],
                             body_pairs=["2body"], strict_transforms=2, paper_draws=1, workers=1,
                             hparams={"gemnet_t": SMALL, "gemnet_q": {**SMALL, **QUAD}})
    exps = [e for e in plan(cfg) if e.pair in ("kchain_4", "2body")]
    res = run_experiments(cfg, exps, progress=False)
    assert set(res) == {e.name for e in exps}
    for r in res.values():
        assert len(r["paper"]) == len(r["strict"]) == 1 and r["n_params"] > 0
        assert all(0.0 <= a <= 100.0 for a in r["paper"] + r["strict"])
    facts = model_facts(cfg)
    assert facts["gemnet_q"]["invariance"] == "E(3)-invariant" and facts["gemnet_q"]["layer_argument"] == "num_blocks"
