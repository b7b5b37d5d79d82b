"""Bounded fuzz of the C-STORE path of a running ``aigw serve``: mutated instances (real and
synthetic; byte flips, corrupted length fields, truncation, nested sequences, codestream
header edits, impossible image attributes) sent byte for byte over one association.

Asserted for every instance: an answer (the association holds), and every failure status
carries its reason (Error Comment); after every batch: C-ECHO answers, on the same
association and on a new one, and the server's resident memory stays within its budget.

CI budget ~25 s (40 s with start-up); ``AIGW_FUZZ_SECONDS=3600`` runs it for an hour,
``AIGW_FUZZ_SEED`` another sequence (README, "Fuzzing")."""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, _config
from pynetdicom.association import Association

from gateway.ingest.scp import VERIFICATION
from pacs_adapters.requestor import associate
from tests.ingest.edge_peers import echo, memory_kb
from tests.mutations import Mutant, Mutator, fuzz_seconds, fuzz_seed, sources, write_mutant
from tests.services import GatewayProcess, free_port, gateway_env

BATCH = 20
RSS_BUDGET_KB = 192 * 1024  # over the server's resident size after warm-up


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[GatewayProcess]:
    """``aigw serve`` where nothing completes (the fuzz is about the edge)."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    env = gateway_env(quiet_period_s="3600", min_free_bytes="0", log_level="WARNING")
    process = GatewayProcess(data_dir, free_port(), env, [])
    process.start()
    try:
        assert echo(process.dicom_port) == 0
        yield process
    finally:
        process.stop()


def _associate(port: int, mutants: list[Mutant]) -> Association:
    ae = AE("IRK_CAMI")
    for sop_class, syntax in dict.fromkeys((m.sop_class, m.transfer_syntax) for m in mutants):
        ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context(VERIFICATION)
    assoc = associate(ae, "127.0.0.1", port, ae_title="AIGW")
    assert assoc.is_established
    return assoc


@pytest.mark.filterwarnings("ignore")
def test_mutated_instances_are_answered_with_a_status_and_a_reason(
    serve: GatewayProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assert serve.process is not None
    pid = serve.process.pid
    datasets = sources()
    mutator = Mutator(fuzz_seed(11))
    # one of each source first, so the association offers every context the fuzz will use
    contexts = [mutator.mutant(d) for d in datasets]
    assoc = _associate(serve.dicom_port, contexts)
    mutants = mutator.mutants(datasets)
    baseline_kb = memory_kb(pid)["VmRSS"]
    deadline = time.monotonic() + fuzz_seconds(25)
    statuses: Counter[str] = Counter()
    sent = 0
    try:
        while time.monotonic() < deadline:
            for _one in range(BATCH):
                mutant = next(mutants)
                path = write_mutant(mutant, tmp_path, sent)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    response = assoc.send_c_store(path)
                sent += 1
                assert "Status" in response, f"no answer to {mutant.mutation}: association lost"
                status = int(response.Status)
                statuses[f"0x{status:04X}"] += 1
                if status != 0 and status & 0xF000 != 0xB000:
                    assert str(response.get("ErrorComment", "")).strip(), (
                        f"0x{status:04X} without a reason for {mutant.mutation}"
                    )
            assert int(assoc.send_c_echo().Status) == 0
            assert echo(serve.dicom_port) == 0
            rss_kb = memory_kb(pid)["VmRSS"]
            assert rss_kb - baseline_kb < RSS_BUDGET_KB, (sent, rss_kb, baseline_kb)
    finally:
        if assoc.is_established:
            assoc.release()
    assert statuses["0x0000"] > 0 and len(statuses) > 1, statuses  # both stored and refused
