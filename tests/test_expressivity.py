"""faenet.expressivity (App. B.2, Tables 3-5): dojo coordinates, invariant multisets, congruence, protocols.

Findings pinned here: the rotsym pairs and BOTH 4-body pairs of the dojo are congruent under a proper
rotation (so no E(3)-invariant model can separate them); k-chains, 2-body and 3-body are not congruent.
"""

import math

import pytest
import torch
from torch import nn

from faenet.data.records import validate_record
from faenet.expressivity import (
    DOJO_ATOMIC_NUMBER,
    PairClassifier,
    are_congruent,
    distance_multiset,
    dojo_pairs,
    evaluate_pair,
    find_congruence,
    four_body_nonchiral_pair,
    k_body_multiset,
    k_chain_pair,
    neighbourhood_multisets,
    pair_congruence,
    rotsym_pair,
    run_pair_experiment,
    train_pair_classifier,
)
from faenet.model import FAENet
from faenet.symmetry import SymmetryWrapper

F64 = torch.float64
PAIRS = dojo_pairs()


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny graphs: intra-op threads only add contention on a loaded 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- coordinates and records ----------------------------------------------------------------------------

def test_records_follow_the_schema():
    for name, pair in PAIRS.items():
        for label, g in enumerate(pair.graphs):
            validate_record(g, name)
            assert g.y == float(label)
            assert torch.equal(g.atomic_numbers, torch.full((g.natoms,), DOJO_ATOMIC_NUMBER))
            assert torch.equal(g.tags, torch.full((g.natoms,), -1)) and not g.pbc.any() and not g.cell.any()
            src, dst = g.edge_index
            edges = set(zip(src.tolist(), dst.tolist(), strict=True))
            assert edges == {(j, i) for i, j in edges}  # undirected
    assert PAIRS["kchain_4"].graphs[0].edge_index.shape[1] == 2 * 5  # path of 6 nodes
    assert PAIRS["rotsym_7"].graphs[0].edge_index.shape[1] == 2 * 7  # star
    assert PAIRS["4body_nonchiral"].graphs[0].edge_index.shape[1] == 2 * 7


@pytest.mark.parametrize("k", [2, 4, 5])
def test_k_chain_coordinates(k):
    g0, g1 = k_chain_pair(k).graphs
    for g in (g0, g1):
        p = g.pos.double()
        assert torch.allclose(p.mean(0), torch.zeros(3, dtype=F64), atol=1e-6)  # each centred
        assert torch.allclose((p[1:] - p[:-1]).norm(dim=1), torch.full((k + 1,), 5.0, dtype=F64), atol=1e-5)
        assert torch.equal(p[:, 2], torch.zeros(k + 2, dtype=F64))
    # Before centring they differ only in the x sign of the first end node: (-4, -3) vs (4, -3).
    d = g1.pos.double() - g0.pos.double()
    expected = torch.tensor([[8.0, 0, 0]] + [[0.0, 0, 0]] * (k + 1), dtype=F64)
    assert torch.allclose(d - d[1], expected, atol=1e-5)


def test_rotsym_and_four_body_coordinates():
    for fold, deg in [(2, 120.0), (3, 90.0), (5, 60.0), (7, 45.0)]:
        g0, g1 = rotsym_pair(fold).graphs
        p0, p1 = g0.pos.double(), g1.pos.double()
        assert torch.allclose(p0[1:].norm(dim=1), torch.ones(fold, dtype=F64), atol=1e-6)
        ang = math.degrees(math.atan2(float(p1[1, 1]), float(p1[1, 0])))
        assert ang == pytest.approx(deg, abs=1e-4)
    with pytest.raises(ValueError, match="r must"):
        rotsym_pair(3, r=4)
    # Rotated B points of the dojo's experiments/incompleteness.ipynb (B_i @ e3nn.o3.matrix_y(2π/10)).
    b = four_body_nonchiral_pair().graphs[0].pos.double()[4:7]
    expected = torch.tensor([[4.778, -2, -1.473], [-2.939, -2, 4.045], [-0.076, -2, -4.999]], dtype=F64)
    assert torch.allclose(b, expected, atol=1e-3)


def test_edge_modes():
    g = k_chain_pair(4, edges="full").graphs[0]
    assert g.edge_index.shape[1] == 6 * 5
    g = k_chain_pair(4, edges="radius", cutoff=10.0).graphs[0]
    d = (g.pos[g.edge_index[0]] - g.pos[g.edge_index[1]]).norm(dim=1)
    assert bool((d <= 10.0 + 1e-5).all()) and g.edge_index.shape[1] > 10
    with pytest.raises(ValueError, match="edges must be"):
        k_chain_pair(4, edges="knn")


# -- invariant multisets ---------------------------------------------------------------------------------

def same(a, b) -> bool:
    return a == b


def test_distance_multisets_where_the_dojo_says_equal():
    def full(name):
        g0, g1 = PAIRS[name].graphs
        return torch.allclose(distance_multiset(g0.pos), distance_multiset(g1.pos), atol=1e-4)

    def body(name, order, chiral=False):
        g0, g1 = PAIRS[name].graphs
        return same(k_body_multiset(g0.pos, order, chiral=chiral, decimals=3),
                    k_body_multiset(g1.pos, order, chiral=chiral, decimals=3))

    # k-chains: every 1-hop neighbourhood is identical, the global shape is not.
    g0, g1 = PAIRS["kchain_4"].graphs
    hood0 = neighbourhood_multisets(g0.pos, g0.edge_index, 4)
    assert hood0 == neighbourhood_multisets(g1.pos, g1.edge_index, 4)
    assert not full("kchain_4")
    # 2-body: same centre distances {5, 5}, different 3-body scalars (and full distance sets).
    assert body("2body", 2) and not body("2body", 3) and not full("2body")
    # 3-body: same 2- and 3-body scalars (hence same full distance multiset), different 4-body ones.
    assert body("3body", 2) and body("3body", 3) and full("3body") and not body("3body", 4)
    # 4-body pairs: same scalars up to order 4, chirality included.
    for name in ("4body_chiral", "4body_nonchiral"):
        assert body(name, 2) and body(name, 3) and body(name, 4) and body(name, 4, chiral=True) and full(name)


def test_k_body_multiset_sees_chirality():
    tetra = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3.0]], dtype=F64)
    mirror = tetra * torch.tensor([-1.0, 1.0, 1.0], dtype=F64)
    assert k_body_multiset(tetra, 4) == k_body_multiset(mirror, 4)
    assert k_body_multiset(tetra, 4, chiral=True) != k_body_multiset(mirror, 4, chiral=True)


# -- congruence -------------------------------------------------------------------------------------------

def random_orthogonal(gen, det: float) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q


def test_congruence_on_built_pairs():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(8, 3, generator=gen, dtype=F64) * 2
    za = torch.tensor([1, 6, 6, 8, 1, 1, 6, 8])
    perm = torch.randperm(8, generator=gen)
    t = torch.randn(3, generator=gen, dtype=F64) * 10
    for det in (1.0, -1.0):
        q = random_orthogonal(gen, det)
        b = torch.empty_like(a)
        zb = torch.empty_like(za)
        b[perm], zb[perm] = a @ q + t, za  # b[perm[i]] is the image of a[i]
        c = find_congruence(a, b, za, zb)
        assert c is not None and c.error < 1e-9
        assert torch.allclose(a @ c.rotation + c.translation, b[c.permutation], atol=1e-9)
        assert torch.equal(za, zb[c.permutation])
        # A generic cloud is chiral: its mirror image is not a rotated copy.
        assert are_congruent(a, b, za, zb, allow_reflection=False) == (det > 0)
        # Perturbed copy: one atom moved by 0.01 Å.
        b2 = b.clone()
        b2[3] += torch.tensor([0.01, 0.0, 0.0], dtype=F64)
        assert not are_congruent(a, b2, za, zb)
        # Same geometry, species swapped between two atoms of different elements.
        zb2 = zb.clone()
        i, j = perm[0], perm[1]  # atoms 0 (H) and 1 (C) of a
        zb2[i], zb2[j] = zb[j], zb[i]
        assert not are_congruent(a, b, za, zb2)
    assert not are_congruent(a, a[:7])
    with pytest.raises(ValueError, match="atomic numbers"):
        are_congruent(a, a, za[:3], za)


def test_dojo_pair_congruence():
    result = {name: pair_congruence(p) for name, p in PAIRS.items()}
    congruent = {n for n, r in result.items() if r["E3"]}
    assert congruent == {"rotsym_2", "rotsym_3", "rotsym_5", "rotsym_7", "4body_chiral", "4body_nonchiral"}
    assert all(r["SE3"] == r["E3"] for r in result.values())  # proper rotations suffice where congruent
    # The "chiral" pair is a 180-degree rotation about z (A1 <-> A3, C+ -> C-).
    g0, g1 = PAIRS["4body_chiral"].graphs
    c = find_congruence(g0.pos, g1.pos, allow_reflection=False)
    assert c.permutation.tolist() == [0, 3, 2, 1, 4]
    assert torch.allclose(c.rotation, torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=F64)), atol=1e-6)


# -- training / evaluation protocol -------------------------------------------------------------------------

def tiny_faenet(method: str = "none"):
    def factory() -> nn.Module:
        model = FAENet(cutoff=10.0, hidden_channels=16, num_filters=16, num_gaussians=8, num_interactions=1,
                       tag_hidden_channels=0, pg_hidden_channels=0, phys_embeds=False, skip_co="")
        return model if method == "none" else SymmetryWrapper(model, method, frame_dim=3)
    return factory


def test_training_separates_a_pair_and_strict_protocol_needs_invariance():
    pair = PAIRS["3body"]
    clf = train_pair_classifier(tiny_faenet("full"), pair, epochs=40, seed=0, lr=1e-2, dtype=F64)
    assert not clf.training and len(clf.history.val_acc) == 40 and clf.history.best_val_acc == 100.0
    assert evaluate_pair(clf, pair, "paper") == 100.0
    # Full FA is E(3)-invariant and 3-body is not congruent: random E(3) moves keep the answer.
    assert evaluate_pair(clf, pair, "strict", n_draws=50, generator=torch.Generator().manual_seed(0)) == 100.0


def test_congruent_pair_is_at_chance_for_invariant_and_strict_protocols():
    pair = PAIRS["4body_chiral"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        clf = PairClassifier(tiny_faenet("full")()).double().eval()
    logits = clf(pair.batch(F64))
    assert torch.allclose(logits[0], logits[1], atol=1e-9)  # congruent + invariant = identical outputs
    assert evaluate_pair(clf, pair, "paper") == 50.0
    # A lab-frame model separates the fixed coordinates, but not randomly moved copies (expected 50%).
    clf = train_pair_classifier(tiny_faenet("none"), PAIRS["rotsym_3"], epochs=40, seed=0, lr=1e-2, dtype=F64)
    assert evaluate_pair(clf, PAIRS["rotsym_3"], "paper") == 100.0
    gen = torch.Generator().manual_seed(1)
    strict = evaluate_pair(clf, PAIRS["rotsym_3"], "strict", n_draws=300, generator=gen)
    assert 35.0 < strict < 65.0


def test_run_pair_experiment_seeds_and_reuse():
    calls = []

    def factory():
        calls.append(1)
        return tiny_faenet("none")()

    res = run_pair_experiment(factory, PAIRS["2body"], seeds=(0, 1), reuse_model=True, epochs=3, lr=1e-2,
                              n_strict_draws=4)
    assert len(calls) == 1  # the dojo keeps one model across seeds
    assert set(res.accuracies) == {"paper", "strict"} and len(res.accuracies["paper"]) == 2
    accs = torch.tensor(res.accuracies["paper"], dtype=F64)
    assert res.mean() == pytest.approx(float(accs.mean()))
    assert res.std() == pytest.approx(float(accs.std(correction=0)))
    res = run_pair_experiment(factory, PAIRS["2body"], seeds=(0, 1), epochs=2, lr=1e-2, protocols=("paper",))
    assert len(calls) == 3 and set(res.accuracies) == {"paper"}


def test_protocol_arguments_are_checked():
    clf = PairClassifier(tiny_faenet()()).eval()
    with pytest.raises(ValueError, match="protocol"):
        evaluate_pair(clf, PAIRS["2body"], "lenient")
    with pytest.raises(ValueError, match="group"):
        evaluate_pair(clf, PAIRS["2body"], "strict", group="O2")
    with pytest.raises(ValueError, match="select"):
        train_pair_classifier(tiny_faenet(), PAIRS["2body"], select="best")
    with pytest.raises(ValueError, match="k must"):
        k_chain_pair(1)


def test_frame_report_says_what_frame_averaging_sees():
    from faenet.expressivity import frame_report

    rep = {name: frame_report(p) for name, p in PAIRS.items()}
    # Congruent pairs with a well-separated spectrum: both graphs give the same set of frame inputs.
    for name in ("4body_chiral", "4body_nonchiral"):
        assert rep[name]["inputs_match"] == {"E3": True, "SE3": True} and not any(rep[name]["degenerate"])
    # Non-congruent pairs never match; the 2-body pair's second graph is collinear (degenerate spectrum).
    for name in ("kchain_4", "2body", "3body"):
        assert rep[name]["inputs_match"] == {"E3": False, "SE3": False}
    assert rep["2body"]["degenerate"] == [False, True]
    # Planar stars: repeated in-plane eigenvalues, the frames are the eigensolver's choice.
    assert all(all(rep[f"rotsym_{f}"]["degenerate"]) for f in (2, 3, 5, 7))
    # A congruent copy moved by a generic rotation keeps matching when the spectrum is well separated.
    g0, g1 = PAIRS["3body"].graphs
    q = random_orthogonal(torch.Generator().manual_seed(3), 1.0)
    moved = g0.clone()
    moved.pos = (g0.pos.double() @ q + 2.0).float()
    assert frame_report(type(PAIRS["3body"])("copy", (g0, moved)))["inputs_match"]["E3"]


def test_run_pair_experiment_returns_one_history_per_seed():
    res = run_pair_experiment(tiny_faenet("none"), PAIRS["2body"], seeds=(0, 1, 2), epochs=3, lr=1e-2,
                              n_strict_draws=2)
    assert len(res.histories) == 3 and all(len(h.val_acc) == 3 for h in res.histories)
    assert [h.best_val_acc for h in res.histories] == [max(h.val_acc) for h in res.histories]
    # The for-loop Adam and the fused kernel follow the same update rule (rounding-level differences).
    a = train_pair_classifier(tiny_faenet("none"), PAIRS["2body"], epochs=3, lr=1e-2, dtype=F64, select="last")
    b = train_pair_classifier(tiny_faenet("none"), PAIRS["2body"], epochs=3, lr=1e-2, dtype=F64, select="last",
                              fused_adam=False)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-8)
