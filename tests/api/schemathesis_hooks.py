"""A check schemathesis runs on every response of the contract run, beside its own: no
server internals in any answer — no traceback, no temporary upload folder, none of the
server's own paths (given in ``AIGW_SERVER_PATHS``, separated by ``os.pathsep``)."""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from schemathesis import CheckContext, Response
from schemathesis.generation.case import Case

MARKERS = ("Traceback (most recent call last)", "aigw-upload-", "aigw-rules-")


@schemathesis.check
def no_server_internals(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    paths = [p for p in os.environ.get("AIGW_SERVER_PATHS", "").split(os.pathsep) if p]
    text = response.content.decode("utf-8", errors="replace")
    leaked = [marker for marker in (*MARKERS, *paths) if marker in text]
    if leaked:
        raise AssertionError(f"the response shows server internals: {leaked}")
    return None
