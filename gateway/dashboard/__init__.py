"""The regional dashboard: server-rendered Russian pages under ``/dashboard`` — the national
table of regions against the three-device target and how many studies wait and why, a
region's devices, study types, sources, volume and failures, one study's timeline,
findings, flag image and radiologists' verdicts (with the verdict form for a radiologist),
and each device version's figures and drift per region.

Every asset is served from this package (no internet); charts are inline SVG. Login takes
the same API tokens; the session is a signed, HttpOnly cookie.

Modules
-------
views
    The routes: login, the national table, a region, a study (and its verdict form), device
    monitoring; each confined to the caller.
stats
    What the pages show, computed from the index.
waiting
    How many studies wait, and why (the step each waits for), for the national page.
charts
    Bar charts as inline SVG.
"""

from gateway.dashboard.views import dashboard_router

__all__ = ["dashboard_router"]
