"""The C-FIND SCU against archives that answer badly: a pynetdicom Query/Retrieve SCP on
loopback whose answers the test chooses. Every bad answer is a ScuError, never a count."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt

from pacs_adapters.dicom_find import STUDY_ROOT_FIND, study_instance_count
from pacs_adapters.dicom_scu import Peer, ScuError
from tests.services import free_port

# (status, NumberOfStudyRelatedInstances; None: a match without it)
Answer = list[tuple[int, Any]]


@pytest.fixture
def archive() -> Iterator[Callable[[Answer], Peer]]:
    servers: list[Any] = []

    def start(answer: Answer) -> Peer:
        def on_find(_event: Any) -> Iterator[tuple[int, Dataset | None]]:
            for status, count in answer:
                if status not in (0xFF00, 0xFF01):
                    yield status, None  # a failure carries no identifier
                    continue
                identifier = Dataset()
                identifier.QueryRetrieveLevel = "STUDY"
                identifier.StudyInstanceUID = "1.2.3"
                if count is not None:
                    identifier.NumberOfStudyRelatedInstances = count
                yield status, identifier

        ae = AE(ae_title="ARCHIVE")
        ae.add_supported_context(STUDY_ROOT_FIND)
        port = free_port()
        servers.append(
            ae.start_server(
                ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)]
            )
        )
        return Peer(host="127.0.0.1", port=port, called_ae="ARCHIVE", timeout_s=5.0)

    yield start
    for server in servers:
        server.shutdown()


def test_a_well_formed_answer_is_the_count(archive: Callable[[Answer], Peer]) -> None:
    assert study_instance_count(archive([(0xFF00, "42")]), "1.2.3") == 42


def test_no_match_means_the_archive_does_not_know_the_study(
    archive: Callable[[Answer], Peer],
) -> None:
    assert study_instance_count(archive([]), "1.2.3") is None


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ([(0xFF00, None)], "no usable NumberOfStudyRelatedInstances"),
        ([(0xFF00, "0")], "no usable NumberOfStudyRelatedInstances"),
        ([(0xFF00, "99999999999")], "no usable NumberOfStudyRelatedInstances"),
        ([(0xFF00, "3"), (0xFF00, "4")], "different counts"),
        ([(0xFF00, "3")] * 17, "more than 16 matches"),
        ([(0xA700, None)], "status 0xA700"),
    ],
)
def test_a_bad_answer_is_an_error_not_a_count(
    archive: Callable[[Answer], Peer], answer: Answer, why: str
) -> None:
    with pytest.raises(ScuError, match=why):
        study_instance_count(archive(answer), "1.2.3")


def test_an_archive_that_is_not_there_is_an_error() -> None:
    peer = Peer(host="127.0.0.1", port=free_port(), called_ae="NOBODY", timeout_s=2.0)
    with pytest.raises(ScuError, match="cannot associate"):
        study_instance_count(peer, "1.2.3")
