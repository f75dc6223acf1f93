"""Datasets: the one record schema (records.py), LMDB storage, downloads, embedded and real sets."""
