"""Bounded fuzz of the decode stage: mutated instances (real and synthetic) through
``read_dataset`` ▸ the pixel checks ▸ decode. Each either decodes or is refused with a
:class:`DecodeError` and its reason; nothing else escapes, and the process's peak memory
stays within a budget (the checks stop header bombs before a decoder allocates).

CI budget ~20 s; ``AIGW_FUZZ_SECONDS=3600`` runs it for an hour (README, "Fuzzing")."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest

from gateway.inference.decode import DecodeError, decode_image, read_dataset
from gateway.inference.pixel_checks import PixelBudget, check_job
from tests.mutations import Mutator, fuzz_seconds, fuzz_seed, sources

PEAK_BUDGET_MB = 768  # over the RSS before the run; the largest source decodes to ~60 MB


def _status_mb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise AssertionError(field)


@pytest.mark.filterwarnings("ignore")
def test_mutated_instances_decode_or_are_refused_with_a_reason() -> None:
    datasets = sources()
    mutants = Mutator(fuzz_seed(20261206)).mutants(datasets)
    Path("/proc/self/clear_refs").write_text("5")
    before_mb = _status_mb("VmRSS")
    deadline = time.monotonic() + fuzz_seconds(20)
    outcomes = {"decoded": 0, "refused": 0}
    while time.monotonic() < deadline:
        mutant = next(mutants)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dataset = read_dataset(mutant.part10())
                check_job([dataset], PixelBudget())
                decode_image(dataset)
                outcomes["decoded"] += 1
            except DecodeError as refused:
                assert str(refused), mutant.mutation
                outcomes["refused"] += 1
            except Exception as exc:
                raise AssertionError(f"{mutant.mutation} of {mutant.source}: {exc!r}") from exc
        peak_mb = _status_mb("VmHWM")
        assert peak_mb - before_mb < PEAK_BUDGET_MB, (mutant.mutation, mutant.source, peak_mb)
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0, outcomes
