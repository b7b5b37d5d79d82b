"""DICOM UID validation. Identifiers from the network become object-store keys and paths, so
nothing that is not a well-formed UID (digits and dots, at most 64 characters) gets that far.
"""

import re

# PS3.5 §9.1 also forbids leading zeros in a component, but real scanners send them and they
# are harmless in a path; empty components, other characters and over-long values are refused.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: object) -> bool:
    """True for a value made only of digit groups separated by single dots, 1–64 characters."""
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None
