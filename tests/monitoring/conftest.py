"""The dashboard's headless Chromium, for the verdict form in the real browser."""

from tests.dashboard.conftest import browser

__all__ = ["browser"]
