"""Every DIMSE status the gateway answers, in one place (PS3.4 Annex B / PS3.7 Annex C)."""

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    # DICOMweb STOW-RS failure reasons (PS3.18 Table 10.5.3-2) beside the C-STORE ones.
    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    # Refused: the sender keeps its copy and retries later.
    OUT_OF_RESOURCES = 0xA700
    # Error: the dataset itself is the problem; retrying the same bytes will not help.
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    MISSING_ATTRIBUTE = 0xC001
    INVALID_UID = 0xC002

    @property
    def is_success(self) -> bool:
        return self is Status.SUCCESS
