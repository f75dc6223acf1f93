"""Thin DVC stage entry points: read params (via config.py), call the library, write outputs, log MLflow.

Each stage's name in dvc.yaml is its module here: ``python -m pipeline.<stage>``.
"""
