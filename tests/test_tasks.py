"""faenet.tasks is the one definition of the task facts: every consumer sees the same objects."""

import faenet.data.catalysis as catalysis
import faenet.data.dataset as dataset
import faenet.data.oc20 as oc20
import faenet.tasks as tasks
import pipeline.ablation as ablation
import pipeline.config as config
import pipeline.reporting.claims as claims
import pipeline.reporting.tables as report_tables


def test_task_facts():
    assert tasks.TASKS == ("is2re", "s2ef", "qm7x", "qm9", "md17") == tasks.CATALYSIS + tasks.MOLECULES
    assert tasks.FRAME_DIM == {"is2re": 2, "s2ef": 2, "qm7x": 3, "qm9": 3, "md17": 3}
    assert set(tasks.FORCE_TASKS) == {"s2ef", "qm7x", "md17"} and set(tasks.EVAL_SPLITS) == set(tasks.TASKS)
    # the first split drives the schedulers: a validation split, never test
    assert {t: s[0] for t, s in tasks.EVAL_SPLITS.items()} == {"is2re": "val_id", "s2ef": "val_id",
                                                               "qm7x": "val_id", "qm9": "val", "md17": "val"}
    assert all(s[-1] == "test" for s in tasks.EVAL_SPLITS.values())
    assert tasks.EVAL_SPLITS["is2re"][:4] == tasks.OC20_VAL_SPLITS == tasks.EVAL_SPLITS["s2ef"][:4]


def test_consumers_import_the_task_facts():
    assert config.DATASETS is tasks.TASKS and config.CATALYSIS is tasks.CATALYSIS
    assert config.FRAME_DIM is tasks.FRAME_DIM and config.FORCE_TASKS is tasks.FORCE_TASKS
    assert config.EVAL_SPLITS is tasks.EVAL_SPLITS and config.MOLECULES is tasks.MOLECULES
    assert dataset.TASKS is tasks.TASKS and dataset.FORCE_TASKS is tasks.FORCE_TASKS
    assert oc20.CATALYSIS is tasks.CATALYSIS and oc20.OC20_VAL_SPLITS is tasks.OC20_VAL_SPLITS
    assert report_tables.OC20_SPLITS is claims.OC20_SPLITS is ablation.VAL_SPLITS is tasks.OC20_VAL_SPLITS
    assert catalysis.SPLITS == ("train", *tasks.EVAL_SPLITS["is2re"])
