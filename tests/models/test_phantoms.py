"""The phantoms put lesions where their ground truth says, on plausible anatomy."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from models.phantoms import (
    HaemorrhageKind,
    Lesion,
    Phantom,
    chest_radiograph,
    ct_chest,
    ct_head,
    mammogram,
)

Maker = Callable[[int], Phantom]

SMALL: dict[str, Maker] = {
    "chest_radiograph": lambda seed: chest_radiograph(
        np.random.default_rng(seed), size=(256, 256), n_lesions=2
    ),
    "ct_chest": lambda seed: ct_chest(
        np.random.default_rng(seed), n_slices=24, size=(256, 256), n_nodules=2
    ),
    "ct_head": lambda seed: ct_head(np.random.default_rng(seed), n_slices=10, size=(256, 256)),
    "mammogram": lambda seed: mammogram(
        np.random.default_rng(seed), size=(512, 416), view="MLO", calcifications=True
    ),
}


def ring(
    phantom: Phantom, lesion: Lesion, inner_mm: float, width_mm: float
) -> npt.NDArray[np.bool_]:
    """Pixels between ``inner_mm`` and ``inner_mm + width_mm`` from the lesion's centre."""
    axes = np.ogrid[tuple(slice(0, n) for n in phantom.pixels.shape)]
    d2 = sum(
        ((g - c) * s) ** 2 for g, c, s in zip(axes, lesion.center, phantom.spacing_mm, strict=True)
    )
    result: npt.NDArray[np.bool_] = (
        (d2 >= inner_mm**2) & (d2 < (inner_mm + width_mm) ** 2) & ~phantom.mask
    )
    return result


def lesion_mask(phantom: Phantom, index: int) -> npt.NDArray[np.bool_]:
    result: npt.NDArray[np.bool_] = phantom.labels == index + 1
    return result


@pytest.fixture(scope="module")
def phantoms_by_name() -> dict[str, Phantom]:
    return {name: make(7) for name, make in SMALL.items()}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_gives_the_same_phantom(name: str) -> None:
    first, second = SMALL[name](3), SMALL[name](3)
    assert np.array_equal(first.pixels, second.pixels)
    assert np.array_equal(first.labels, second.labels)
    assert first.lesions == second.lesions
    assert first.lesions


@pytest.mark.parametrize("name", sorted(SMALL))
def test_another_seed_gives_another_phantom(name: str) -> None:
    first, second = SMALL[name](3), SMALL[name](4)
    assert not np.array_equal(first.pixels, second.pixels)
    assert first.lesions != second.lesions


def test_ground_truth_is_consistent(phantoms_by_name: dict[str, Phantom]) -> None:
    for phantom in phantoms_by_name.values():
        assert phantom.mask.shape == phantom.labels.shape == phantom.pixels.shape
        assert np.array_equal(phantom.mask, phantom.labels > 0)
        assert phantom.labels.max() == len(phantom.lesions)
        for index, lesion in enumerate(phantom.lesions):
            mine = lesion_mask(phantom, index)
            assert lesion.voxel_count == int(mine.sum()) > 0
            inside_box = np.zeros_like(mine)
            inside_box[lesion.slices()] = True
            assert not (mine & ~inside_box).any(), "bbox must hold the whole mask"
            for axis, (start, stop) in enumerate(lesion.bbox):
                hits = np.flatnonzero(
                    mine.any(axis=tuple(a for a in range(mine.ndim) if a != axis))
                )
                assert (start, stop) == (hits[0], hits[-1] + 1), "bbox must be tight"
            assert len(lesion.center) == phantom.pixels.ndim
            assert all(
                lo - 1 <= c <= hi for c, (lo, hi) in zip(lesion.center, lesion.bbox, strict=True)
            )


def test_arrays_are_read_only(phantoms_by_name: dict[str, Phantom]) -> None:
    phantom = phantoms_by_name["chest_radiograph"]
    for array in (phantom.pixels, phantom.mask, phantom.labels, phantom.regions["lungs"]):
        with pytest.raises(ValueError, match="read-only"):
            array[0, 0] = 1


def test_chest_radiograph_is_12_bit_with_dark_lungs(phantoms_by_name: dict[str, Phantom]) -> None:
    cxr = phantoms_by_name["chest_radiograph"]
    assert cxr.pixels.dtype == np.uint16 and cxr.pixels.max() <= 4095
    assert cxr.bits_stored == 12
    assert cxr.pixel_spacing_mm == pytest.approx((1.4, 1.4))  # 0.35 mm at 1024
    lungs, body = cxr.regions["lungs"], cxr.regions["body"]
    assert lungs.any() and not (lungs & ~body).any()
    lung_mean = cxr.pixels[lungs & ~cxr.mask].mean()
    assert lung_mean < cxr.pixels[body & ~lungs].mean() - 300
    assert cxr.pixels[~body].mean() < lung_mean / 4  # direct exposure is black
    # Two lung fields, one each side of the midline.
    cols = np.flatnonzero(lungs.any(axis=0))
    assert cols.min() < 128 < cols.max() and not lungs[:, 127:129].any()


def test_chest_radiograph_nodules_are_opacities_inside_the_lungs(
    phantoms_by_name: dict[str, Phantom],
) -> None:
    cxr = phantoms_by_name["chest_radiograph"]
    assert [lesion.kind for lesion in cxr.lesions] == ["nodule", "nodule"]
    for index, lesion in enumerate(cxr.lesions):
        mine = lesion_mask(cxr, index)
        assert not (mine & ~cxr.regions["lungs"]).any()
        assert 8 <= lesion.diameter_mm <= 30
        around = ring(cxr, lesion, lesion.diameter_mm / 2 + 2, 4) & cxr.regions["lungs"]
        assert cxr.pixels[mine].mean() > cxr.pixels[around].mean() + 150
        area = lesion.voxel_count * math.prod(cxr.pixel_spacing_mm)
        assert area == pytest.approx(math.pi * lesion.diameter_mm**2 / 4, rel=0.15)


def test_ct_chest_is_hounsfield_with_plausible_tissues(
    phantoms_by_name: dict[str, Phantom],
) -> None:
    ct = phantoms_by_name["ct_chest"]
    hu = ct.pixels
    assert hu.dtype == np.int16 and hu.shape == (24, 256, 256)
    assert ct.spacing_mm == pytest.approx((1.25, 1.4, 1.4))
    body, lungs = ct.regions["body"], ct.regions["lungs"]
    bottom = np.flatnonzero(body.any(axis=(0, 2))).max()  # the table lies below the body
    assert (hu[:, :bottom][~body[:, :bottom]] == -1000).all()
    assert -900 < np.median(hu[lungs & ~ct.mask]) < -780
    soft = body & ~lungs
    assert -150 < np.median(hu[soft]) < 100
    assert (hu[soft] > 500).sum() > 1000  # spine and ribs
    assert lungs[:, :, :128].any() and lungs[:, :, 128:].any()


def test_ct_chest_nodules_are_soft_tissue_spheres_in_the_lungs(
    phantoms_by_name: dict[str, Phantom],
) -> None:
    ct = phantoms_by_name["ct_chest"]
    assert len(ct.lesions) == 2
    for index, lesion in enumerate(ct.lesions):
        mine = lesion_mask(ct, index)
        assert lesion.kind == "nodule" and 4 <= lesion.diameter_mm <= 25
        assert not (mine & ~ct.regions["lungs"]).any()
        around = ring(ct, lesion, lesion.diameter_mm / 2 + 2, 4) & ct.regions["lungs"]
        assert ct.pixels[mine].mean() > -250
        assert ct.pixels[around].mean() < ct.pixels[mine].mean() - 400
        volume = lesion.voxel_count * math.prod(ct.spacing_mm)
        assert volume == pytest.approx(math.pi * lesion.diameter_mm**3 / 6, rel=0.25)


def test_ct_chest_too_thin_for_a_nodule_is_refused() -> None:
    with pytest.raises(ValueError, match="too thin"):
        ct_chest(np.random.default_rng(0), n_slices=4, size=(64, 64))
    empty = ct_chest(np.random.default_rng(0), n_slices=4, size=(64, 64), n_nodules=0)
    assert empty.lesions == () and not empty.mask.any()


@pytest.mark.parametrize("kind", ["intraparenchymal", "subdural"])
def test_ct_head_haemorrhage_is_hyperdense_and_intracranial(kind: HaemorrhageKind) -> None:
    head = ct_head(np.random.default_rng(11), n_slices=10, size=(256, 256), haemorrhage_kind=kind)
    (lesion,) = head.lesions
    assert (lesion.kind, lesion.subtype) == ("haemorrhage", kind)
    brain, skull, ventricles = (
        head.regions["brain"],
        head.regions["skull"],
        head.regions["ventricles"],
    )
    assert not (head.mask & ~brain).any()
    blood = head.pixels[head.mask].mean()
    parenchyma = head.pixels[brain & ~ventricles & ~head.mask].mean()
    assert 55 < blood < 85
    assert 20 < parenchyma < 45
    assert head.pixels[skull].mean() > 700
    assert head.pixels[ventricles].mean() < 15
    volume = lesion.voxel_count * math.prod(head.spacing_mm)
    assert volume <= math.pi * lesion.diameter_mm**3 / 6
    near_skull = np.zeros_like(skull)
    for shift in (-3, 3):
        near_skull |= np.roll(skull, shift, axis=2) | np.roll(skull, shift, axis=1)
    assert (head.mask & near_skull).any() == (kind == "subdural")


def test_ct_head_without_haemorrhage_has_no_lesion() -> None:
    head = ct_head(np.random.default_rng(1), n_slices=6, size=(128, 128), haemorrhage=False)
    assert head.lesions == () and not head.mask.any()


@pytest.mark.parametrize("view", ["CC", "MLO"])
@pytest.mark.parametrize("laterality", ["L", "R"])
def test_mammogram_breast_is_on_its_side(laterality: str, view: str) -> None:
    mg = mammogram(
        np.random.default_rng(5),
        size=(512, 416),
        laterality=laterality,  # type: ignore[arg-type]
        view=view,  # type: ignore[arg-type]
        n_masses=0,
    )
    assert (mg.laterality, mg.view) == (laterality, view)
    breast, pectoral = mg.regions["breast"], mg.regions["pectoral"]
    chest_wall, far_edge = (0, -1) if laterality == "L" else (-1, 0)
    assert breast[:, chest_wall].mean() > 0.6
    assert breast[:, far_edge].mean() == 0
    centroid = np.nonzero(breast)[1].mean()
    assert (centroid < 208) == (laterality == "L")
    assert mg.pixels[breast].mean() > 10 * mg.pixels[~breast].mean()
    if view == "CC":
        assert not pectoral.any()
    else:
        rows, cols = np.nonzero(pectoral)
        assert rows.mean() < 128
        assert (cols.mean() < 104) if laterality == "L" else (cols.mean() > 312)
        assert mg.pixels[pectoral].mean() > mg.pixels[breast & ~pectoral].mean()


def test_mammogram_mass_and_calcifications_are_dense_and_in_the_breast(
    phantoms_by_name: dict[str, Phantom],
) -> None:
    mg = phantoms_by_name["mammogram"]
    assert [lesion.kind for lesion in mg.lesions] == ["mass", "calcification"]
    breast = mg.regions["breast"]
    mass, calcs = lesion_mask(mg, 0), lesion_mask(mg, 1)
    assert not ((mass | calcs) & ~breast).any()
    assert not ((mass | calcs) & mg.regions["pectoral"]).any()
    lesion = mg.lesions[0]
    assert lesion.subtype in ("round", "spiculated")
    around = ring(mg, lesion, lesion.diameter_mm / 2 + 1, 4) & breast
    assert mg.pixels[mass].mean() > mg.pixels[around].mean() + 300
    area = lesion.voxel_count * math.prod(mg.pixel_spacing_mm)
    assert 0.65 <= area / (math.pi * lesion.diameter_mm**2 / 4) <= 1.1
    assert mg.pixels[calcs].mean() > mg.pixels[breast & ~mass & ~calcs].mean() + 800


def test_mammogram_14_bit() -> None:
    mg = mammogram(np.random.default_rng(2), size=(256, 208), bits_stored=14)
    assert mg.bits_stored == 14 and mg.pixels.max() > 4095 and mg.pixels.max() <= 16383


def test_spacing_scales_with_size() -> None:
    rng = np.random.default_rng(0)
    assert chest_radiograph(rng, size=(512, 512), n_lesions=0).pixel_spacing_mm == pytest.approx(
        (0.7, 0.7)
    )
    assert mammogram(rng, size=(1024, 832), n_masses=0).pixel_spacing_mm == pytest.approx(
        (0.2, 0.2)
    )
    head = ct_head(rng, n_slices=4, size=(128, 128), haemorrhage=False)
    assert head.spacing_mm == pytest.approx((5.0, 1.8, 1.8))


@pytest.mark.parametrize(
    "call",
    [
        lambda rng: chest_radiograph(rng, size=(16, 16)),
        lambda rng: chest_radiograph(rng, nodule_diameter_mm=(30.0, 8.0)),
        lambda rng: mammogram(rng, laterality="B"),  # type: ignore[arg-type]
        lambda rng: mammogram(rng, view="ML"),  # type: ignore[arg-type]
        lambda rng: mammogram(rng, bits_stored=16),
        lambda rng: ct_head(rng, haemorrhage_kind="epidural"),  # type: ignore[arg-type]
        lambda rng: ct_chest(rng, n_slices=0),
    ],
)
def test_bad_arguments_are_refused(call: Callable[[np.random.Generator], Phantom]) -> None:
    with pytest.raises(ValueError):
        call(np.random.default_rng(0))
