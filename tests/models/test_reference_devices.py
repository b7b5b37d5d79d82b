"""The reference devices, end to end on the embedded default: phantom studies with and
without lesions, for each study type, sent over DICOM to the gateway; the lesion is found
where the phantom put it and the clean study stays negative.

Tolerance: the finding's centre lies within max(15 mm, the lesion's diameter) of the true
centre in the image plane and, for CT, within 3 slices plus half the lesion's extent.
These devices are trained on synthetic phantoms only, at the sizes used here (radiographs
of a few hundred pixels, CT of 128–256 pixels a side); this checks the plumbing and the
geometry end to end, not clinical performance or generalisation to full-size images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.demo.synthetic import (
    SyntheticStudy,
    chest_xray_study,
    ct_chest_study,
    ct_head_study,
    mammography_study,
    write_study,
)
from gateway.index.read_model import (
    FindingItem,
    JobFilter,
    JobItem,
    StudyFilter,
    list_jobs,
    list_studies,
)
from gateway.settings import Settings
from pacs_adapters.dicom_scu import Peer, send
from tests.services import ROOT
from workers.serve import Gateway

ZOO = ROOT / "models" / "zoo"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not list(ZOO.glob("*/manifest.yaml")),
        reason="the reference devices are not built yet: run `make models` and commit models/zoo",
    ),
]


@pytest.fixture(scope="module")
def zoo_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from tests.services import free_port
    from workers.app import build_gateway

    settings = Settings.model_validate(
        {
            "data_dir": tmp_path_factory.mktemp("zoo") / "var",
            "dicom_host": "127.0.0.1",
            "dicom_port": free_port(),
            "http_port": 0,
            "sources_file": ROOT / "gateway" / "configs" / "sources.yaml",
            "regions_file": ROOT / "gateway" / "configs" / "regions.yaml",
            "routing_file": ROOT / "gateway" / "configs" / "routing.yaml",
            "devices_dir": ZOO,
            "min_free_bytes": 0,
            "quiet_period_s": 2.0,  # a loaded CI machine may pause between instances
            "assembly_poll_s": 0.1,
        }
    )
    gateway = build_gateway(settings)
    gateway.start()
    yield gateway
    gateway.stop()


STUDIES: dict[str, Callable[[int, bool], SyntheticStudy]] = {
    "fluorography": lambda seed, lesion: chest_xray_study(
        seed, kind="fluorography", modality="DX", sop="dx", with_lesion=lesion, size=(448, 448)
    ),
    "chest_xray": lambda seed, lesion: chest_xray_study(
        seed, kind="radiography", modality="CR", sop="cr", with_lesion=lesion, size=(448, 448)
    ),
    "ct_chest": lambda seed, lesion: ct_chest_study(
        seed, n_slices=40, size=(192, 192), with_nodule=lesion
    ),
    "ct_brain": lambda seed, lesion: ct_head_study(
        seed, n_slices=24, size=(192, 192), with_haemorrhage=lesion
    ),
    "mammography": lambda seed, lesion: mammography_study(seed, with_mass=lesion, size=(1024, 832)),
}


def _analyse(gateway: Gateway, study: SyntheticStudy, folder: Path) -> list[JobItem]:
    files = write_study(study, folder)
    peer = Peer("127.0.0.1", gateway.parts.settings.dicom_port, "AIGW", "IRK_CAMI")
    assert send(files, peer).sent == len(files)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        summary = next(
            (
                s
                for s in list_studies(gateway.parts.db, StudyFilter(limit=1000))
                if s.study_uid == study.study_instance_uid
            ),
            None,
        )
        if summary is not None and summary.state == "not_applicable":
            pytest.fail(f"{study.kind}: not applicable: {summary.state_reason}")
        jobs = list_jobs(
            gateway.parts.db, JobFilter(study_uid=study.study_instance_uid, limit=1000)
        )
        if jobs and all(job.state in ("inferred", "failed") for job in jobs):
            return jobs
        time.sleep(0.2)
    pytest.fail(f"{study.kind}: not analysed in time")


def _best(jobs: list[JobItem]) -> FindingItem:
    (job,) = jobs
    assert job.state == "inferred", job.reason
    return max(job.findings, key=lambda f: f.probability)


def _located(study: SyntheticStudy, best: FindingItem) -> bool:
    """Within max(15 mm, the lesion's diameter) in the image plane; CT also within 3 slices
    plus half the lesion's extent."""
    assert best.location is not None and "centre" in best.location
    truth = study.truth_for(best.location["sop_instance_uid"])
    phantom = truth.phantom
    assert phantom is not None
    lesion = phantom.lesions[0]
    centre = best.location["centre"]
    row_mm, col_mm = phantom.pixel_spacing_mm
    if len(lesion.center) == 3:  # CT: the slice through the finding's SOP instance
        assert truth.slice_index is not None
        slices_off = abs(truth.slice_index - lesion.center[0])
        extent = lesion.diameter_mm / 2 / (phantom.slice_spacing_mm or 1.0)
        if slices_off > 3 + extent:
            return False
        true_row, true_col = lesion.center[1], lesion.center[2]
        found_row, found_col = centre[1], centre[2]
    else:
        if truth.lesions:  # mammography: the view showing the mass
            lesion = truth.lesions[0]
        true_row, true_col = lesion.center
        found_row, found_col = centre
    distance = ((found_row - true_row) * row_mm) ** 2 + ((found_col - true_col) * col_mm) ** 2
    return bool(distance**0.5 <= max(15.0, lesion.diameter_mm))


SEEDS = (901, 902, 903)  # per kind: three studies with a lesion, three without


@pytest.mark.parametrize("kind", list(STUDIES))
def test_lesions_are_found_where_they_are_and_clean_studies_stay_negative(
    zoo_gateway: Gateway, tmp_path: Path, kind: str
) -> None:
    """The devices state sensitivity and specificity of about 0.6–0.9 on held-out phantoms
    (their manifests), so a single study may be missed or flagged in the wrong place; what
    must hold end to end is that most lesions are found where the phantom put them (the
    geometry through decode, preprocessing and back to source pixels) and most clean
    studies stay negative."""
    found, flagged, located = 0, 0, []
    for seed in SEEDS:
        positive = STUDIES[kind](seed, True)
        best = _best(_analyse(zoo_gateway, positive, tmp_path / f"p{seed}"))
        if best.positive:
            found += 1
            located.append(_located(positive, best))
        clean = STUDIES[kind](seed + 100, False)
        assert not clean.positive
        if _best(_analyse(zoo_gateway, clean, tmp_path / f"n{seed}")).positive:
            flagged += 1
    assert sum(located) >= 2, (
        f"{kind}: {sum(located)} of {len(SEEDS)} lesions found at their place "
        f"({found} flagged, {found - sum(located)} of them elsewhere)"
    )
    assert flagged <= 1, f"{kind}: {flagged} of {len(SEEDS)} clean studies flagged"
