"""Synthetic studies for the demo, the tests and the benchmarks: phantoms, not patients.

Modules
-------
synthetic
    The one to import: every kind of study, writing them as files, the demo's set.
headers
    Patient, study, series and equipment headers derived from (kind, seed); pixel encoding;
    each instance's ground truth.
ct
    Chest CT with nodules, head CT with a haemorrhage: thin axial series and a localizer.
radiographs
    Chest X-ray / fluorography (DX, CR, digitised SC) and four-view mammography.
"""
