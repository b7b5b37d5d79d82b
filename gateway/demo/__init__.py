"""Synthetic studies for the demo, the tests and the benchmarks: phantoms, not patients.

Modules
-------
synthetic
    CT chest, CT head, chest X-ray / fluorography and mammography studies with their truth.
"""
