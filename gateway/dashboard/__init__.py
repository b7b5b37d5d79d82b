"""The regional dashboard: server-rendered Russian pages under ``/dashboard`` — the national
table of regions against the three-device target, a region's devices, study types, sources,
volume and failures, one study's timeline, findings, flag image and radiologists' verdicts
(with the verdict form for a radiologist), and each device version's figures and drift per
region.

Every asset is served from this package (no internet); charts are inline SVG. Login takes
the same API tokens; the session is a signed, HttpOnly cookie.

Modules
-------
views
    The routes: login, the national table, a region, a study (and its verdict form), device
    monitoring; each confined to the caller.
stats
    What the pages show, computed from the index.
charts
    Bar charts as inline SVG.
"""

from gateway.dashboard.views import dashboard_router

__all__ = ["dashboard_router"]
