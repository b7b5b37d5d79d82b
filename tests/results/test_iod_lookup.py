"""highdicom's attribute-in-IOD lookup, cached by gateway.results.iod_lookup: the names
highdicom calls are rebound, and the answers are the uncached function's."""

from __future__ import annotations

import pytest
from highdicom import _standard_utils, base
from highdicom.sr import content
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

import gateway.results.header  # noqa: F401  (installs the cache, as every builder does)
from gateway.results import iod_lookup

CLASSES = [
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
]
ATTRIBUTES = [
    "ContentDate",
    "ContentTime",
    "NumberOfFrames",
    "PixelData",
    "ImagePositionPatient",
    "SpecimenDescriptionSequence",
    "PerFrameFunctionalGroupsSequence",
    "NoSuchKeyword",
]


def test_highdicom_calls_the_cached_lookup() -> None:
    for module in (_standard_utils, base, content):
        assert module.is_attribute_in_iod is iod_lookup.is_attribute_in_iod, module.__name__


@pytest.mark.parametrize("sop_class", CLASSES)
def test_cached_answers_are_highdicoms(sop_class: str) -> None:
    for attribute in ATTRIBUTES:
        for exclude in (
            None,
            ["PerFrameFunctionalGroupsSequence"],
            ("SharedFunctionalGroupsSequence",),
        ):
            expected = iod_lookup.UNCACHED(attribute, sop_class, exclude)
            assert iod_lookup.is_attribute_in_iod(attribute, sop_class, exclude) is expected
            assert iod_lookup.is_attribute_in_iod(attribute, sop_class, exclude) is expected


def test_unknown_sop_class_still_raises() -> None:
    with pytest.raises(KeyError):
        iod_lookup.is_attribute_in_iod("ContentDate", "1.2.3.4.5")
