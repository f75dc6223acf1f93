"""The four tasks of the paper and their fixed facts: the one definition every module imports.

- ``TASKS``: IS2RE and S2EF (OC20 catalysis, ``CATALYSIS``), QM7-X and QM9 (molecules, ``MOLECULES``), and MD17
  (one molecule's MD trajectory; not a FAENet paper task: the GemNet review's "simple" dataset);
- ``FRAME_DIM``: 2 = frames in the xy plane, rotations/reflections about z (OC20 slabs, Sec. 3.3); 3 = full E(3);
- ``FORCE_TASKS``: tasks whose targets include per-atom forces (S2EF, QM7-X, MD17);
- ``EVAL_SPLITS``: the evaluation splits of each task, the first one being the validation split that drives the
  schedulers; ``OC20_VAL_SPLITS``: OC20's four validation splits (the paper's tables average them).
"""

from __future__ import annotations

CATALYSIS: tuple[str, ...] = ("is2re", "s2ef")
MOLECULES: tuple[str, ...] = ("qm7x", "qm9", "md17")
TASKS: tuple[str, ...] = (*CATALYSIS, *MOLECULES)
FRAME_DIM: dict[str, int] = {"is2re": 2, "s2ef": 2, "qm7x": 3, "qm9": 3, "md17": 3}
FORCE_TASKS: tuple[str, ...] = ("s2ef", "qm7x", "md17")
OC20_VAL_SPLITS: tuple[str, ...] = ("val_id", "val_ood_ads", "val_ood_cat", "val_ood_both")
EVAL_SPLITS: dict[str, tuple[str, ...]] = {"is2re": (*OC20_VAL_SPLITS, "test"),
                                           "s2ef": (*OC20_VAL_SPLITS, "test"),
                                           "qm7x": ("val_id", "val_ood", "test"),
                                           "qm9": ("val", "test"),
                                           "md17": ("val", "test")}
#: Systems in OC20 IS2RE "all" train (ocp docs/core/datasets/oc20.md): the benchmark's epoch of OC20 IS2RE.
OC20_IS2RE_TRAIN: int = 460_328
