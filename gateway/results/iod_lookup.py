"""highdicom's "is this attribute in that IOD?" answered once per question.

``highdicom._standard_utils.is_attribute_in_iod`` walks every module of the IOD and every
attribute of each module (tens of thousands of dictionary visits) on each call, and
highdicom asks it twice for every object it builds (Content Date and Time, in
``SOPClass.__init__``) and twice for every source image an SR references. It is a pure
function of its arguments over the standard's tables that highdicom ships, so a cache gives
the same answers: ~5 ms per question, ~15 ms of a flag image's and ~10 of a GSPS's CPU
(benchmarks/results_cpu.py). highdicom binds the function by name in the modules that call
it; :func:`install` rebinds those names to the cached one. ``tests/results/test_iod_lookup.py``
checks that the names are rebound and that the answers are the same, so a highdicom that
moves them is noticed rather than silently slower.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from types import ModuleType

from highdicom import _standard_utils, base
from highdicom.sr import content

PATCHED_MODULES: tuple[ModuleType, ...] = (_standard_utils, base, content)
UNCACHED: Callable[..., bool] = _standard_utils.is_attribute_in_iod


@functools.lru_cache(maxsize=4096)
def _answer(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
    return bool(UNCACHED(attribute, sop_class_uid, exclude))


def is_attribute_in_iod(
    attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None
) -> bool:
    exclude = None if exclude_path_elements is None else tuple(exclude_path_elements)
    return _answer(str(attribute), str(sop_class_uid), exclude)


def load_tables() -> None:
    """Read the standard's tables highdicom ships now (~0.2 s of JSON, once per process),
    not in the first object built: a results child does this as it starts."""
    _standard_utils.get_sop_class_iod_map()
    _standard_utils.get_iod_module_map()
    _standard_utils.get_module_attribute_map()


def install() -> None:
    """Idempotent: rebind highdicom's names (where a module has the name) to the cache."""
    for module in PATCHED_MODULES:
        if hasattr(module, "is_attribute_in_iod"):
            module.is_attribute_in_iod = is_attribute_in_iod  # type: ignore[attr-defined]
