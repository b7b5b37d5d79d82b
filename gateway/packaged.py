"""The configuration and the reference devices that ship inside the installed packages,
and the rule that finds them: a default name (``configs/…``, ``models/zoo``) that the
working directory lacks is taken from the package, so the gateway runs from any directory
after a plain ``pip install``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# Package data: the default configuration and the reference devices, wherever installed.
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
PACKAGED_DEVICES = Path(str(resources.files("models") / "zoo"))
_PACKAGED_NAMES = ((Path("configs"), PACKAGED_CONFIGS), (Path("models/zoo"), PACKAGED_DEVICES))


def packaged_default(path: Path) -> Path:
    """``path`` itself when it is absolute or exists; for a name under ``configs/`` or
    ``models/zoo`` that the working directory lacks, the packaged file of that name.

    Anything else is returned unchanged, so a missing file is reported as it was written.
    """
    if path.is_absolute() or path.exists():
        return path
    for name, packaged in _PACKAGED_NAMES:
        if path == name or name in path.parents:
            candidate = packaged / path.relative_to(name)
            if candidate.exists():
                return candidate
    return path
