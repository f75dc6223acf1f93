"""The report stage's logic, torch-free: results schemas, the paper tables it writes (1, 2, 8, 9), the Pareto
figures, the claims audit and the index of ``reports/``. ``pipeline.report`` is the stage's wiring."""
