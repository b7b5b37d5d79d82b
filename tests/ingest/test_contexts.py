"""Each association negotiates on its own copy of the SCP's presentation contexts: equal to
what pynetdicom's deepcopy gave, sharing only the UIDs (immutable strings)."""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy

from pynetdicom import AE
from pynetdicom.presentation import PresentationContext

from gateway.ingest.connections import association_contexts
from gateway.ingest.scp import _build_ae
from gateway.settings import Settings
from pacs_adapters.requestor import associate
from tests.services import CT_IMAGE_STORAGE
from workers.serve import Gateway


def _described(contexts: list[PresentationContext]) -> list[tuple[object, ...]]:
    return [
        (c.context_id, c.abstract_syntax, tuple(c.transfer_syntax), c.result, c.as_scu,
         c.as_scp, c.scu_role, c.scp_role)
        for c in contexts
    ]  # fmt: skip


def test_an_association_s_contexts_equal_a_deepcopy_and_are_its_own(
    make_settings: Callable[..., Settings],
) -> None:
    contexts = _build_ae(make_settings(), results=True).supported_contexts
    copies = association_contexts(contexts)
    assert _described(copies) == _described(deepcopy(contexts))
    assert all(a is not b for a, b in zip(copies, contexts, strict=True))
    assert all(
        a._transfer_syntax is not b._transfer_syntax for a, b in zip(copies, contexts, strict=True)
    )
    before = _described(contexts)
    copies[0].transfer_syntax = [copies[0].transfer_syntax[0]]  # negotiation narrows its own
    copies[1].context_id = 99
    copies[2].result = 0
    assert _described(contexts) == before


def test_two_associations_negotiate_each_on_its_own(gateway: Gateway) -> None:
    port = gateway.parts.settings.dicom_port
    for syntax in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
        ae = AE("IRK_CAMI")
        ae.add_requested_context(CT_IMAGE_STORAGE, syntax)
        assoc = associate(ae, "127.0.0.1", port, ae_title="AIGW")
        try:
            assert assoc.is_established
            (accepted,) = assoc.accepted_contexts
            assert accepted.transfer_syntax == [syntax]
        finally:
            assoc.release()
