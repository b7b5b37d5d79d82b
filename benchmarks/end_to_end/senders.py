"""N sender threads, each running one DCMTK ``storescu -R`` per study from a shared queue
until time is up."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.end_to_end.mix import PlannedSend
from tests.services import storescu_command
from tests.services.dcmtk import dcmtk_env

CALLING_AE = "IRK_CAMI"  # configs/sources.yaml: region 38, loopback allowed
CALLED_AE = "AIGW"
MAX_PDU = 131072


@dataclass
class SendLog:
    sent: list[PlannedSend] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def send_for(
    port: int, studies: Sequence[PlannedSend], senders: int, seconds: float
) -> tuple[SendLog, float]:
    """``senders`` threads, each running one storescu per study from a shared queue, until
    ``seconds`` have passed or the queue is empty; the send window's wall seconds."""
    waiting: queue.Queue[PlannedSend] = queue.Queue()
    for study in studies:
        waiting.put(study)
    log = SendLog()
    env = dcmtk_env()
    deadline = time.monotonic() + seconds

    def sender() -> None:
        while time.monotonic() < deadline:
            try:
                study = waiting.get_nowait()
            except queue.Empty:
                return
            command = storescu_command(
                port, study.files, calling_ae=CALLING_AE, called_ae=CALLED_AE, max_pdu=MAX_PDU
            )
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            with log.lock:
                if done.returncode != 0 or "E: " in done.stdout + done.stderr:
                    log.errors.append(f"{study.kind} {study.study_uid}: {done.stderr[-300:]}")
                else:
                    log.sent.append(study)

    started = time.monotonic()
    threads = [threading.Thread(target=sender, name=f"sender-{n}") for n in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return log, time.monotonic() - started
