"""Assessment objects as a viewer sends them (IHE AIRA): a Comprehensive SR that references
the assessed AI result and carries the decision as coded content, and a Key Object Selection
whose title rejects or selects it — built with highdicom, for the tests."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from tests.services import make_uid

# Codes a viewer of ours would use: private, so only the meanings carry the decision.
AI_RESULT_ASSESSMENT = hd.sr.CodedConcept("AIRA-0", "99VIEWER", "AI Result Assessment")
ASSESSMENT = hd.sr.CodedConcept("AIRA-1", "99VIEWER", "Assessment of AI result")
ASSESSED_RESULT = hd.sr.CodedConcept("AIRA-2", "99VIEWER", "Assessed AI result")
VALUES = {
    "accept": hd.sr.CodedConcept("AIRA-A", "99VIEWER", "Accepted"),
    "modify": hd.sr.CodedConcept("AIRA-M", "99VIEWER", "Modified"),
    "reject": hd.sr.CodedConcept("AIRA-R", "99VIEWER", "Rejected (false positive)"),
}
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def assessment_sr(
    assessed: Dataset,
    decisions: Sequence[str],
    *,
    seed: str,
    tracking_uids: Sequence[str] = (),
    comment: str | None = None,
) -> Dataset:
    """A Comprehensive SR in the assessed object's study: one Assessment item per decision
    (``accept``, ``modify``, ``reject``), a reference to the result, the tracking UIDs of the
    findings it is about, and a comment."""
    items: list[hd.sr.ContentItem] = [
        hd.sr.CompositeContentItem(
            name=ASSESSED_RESULT,
            referenced_sop_class_uid=assessed.SOPClassUID,
            referenced_sop_instance_uid=assessed.SOPInstanceUID,
            relationship_type=CONTAINS,
        )
    ]
    items += [
        hd.sr.UIDRefContentItem(
            name=codes.DCM.TrackingUniqueIdentifier, value=uid, relationship_type=CONTAINS
        )
        for uid in tracking_uids
    ]
    items += [
        hd.sr.CodeContentItem(name=ASSESSMENT, value=VALUES[d], relationship_type=CONTAINS)
        for d in decisions
    ]
    if comment is not None:
        items.append(
            hd.sr.TextContentItem(name=codes.DCM.Comment, value=comment, relationship_type=CONTAINS)
        )
    root = hd.sr.ContainerContentItem(name=AI_RESULT_ASSESSMENT)
    root.ContentSequence = hd.sr.ContentSequence(items)
    content = hd.sr.ContentSequence([root], is_root=True)
    return hd.sr.ComprehensiveSR(
        evidence=[assessed],
        content=content,
        series_instance_uid=make_uid("aira-series", seed),
        series_number=901,
        sop_instance_uid=make_uid("aira-sr", seed),
        instance_number=1,
        manufacturer="Test viewer",
        is_complete=True,
        is_final=True,
        is_verified=False,
    )


def selection_kos(
    assessed: Dataset, title: Code, *, seed: str, description: str | None = None
) -> Dataset:
    """A Key Object Selection titled ``title`` that selects the assessed object."""
    return hd.ko.KeyObjectSelectionDocument(
        evidence=[assessed],
        content=hd.ko.KeyObjectSelection(
            document_title=title, referenced_objects=[assessed], description=description
        ),
        series_instance_uid=make_uid("aira-kos-series", seed),
        series_number=902,
        sop_instance_uid=make_uid("aira-kos", seed),
        instance_number=1,
        manufacturer="Test viewer",
    )


REJECTED_FOR_QUALITY = codes.DCM.RejectedForQualityReasons
OF_INTEREST = codes.DCM.OfInterest
