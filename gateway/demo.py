"""``make demo``: the main job on the embedded default, end to end, with no services.

Starts the gateway in this process (SQLite + folder store under the data dir), generates
synthetic studies (CT chest, CT head, fluorography, chest X-ray, mammography), sends them
over DICOM as the first configured source, waits until each study is assembled, and prints
what arrived. Later stages extend it (routing, inference, results).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.errors import ConfigError
from gateway.serve import Gateway, Parts
from gateway.settings import Settings
from gateway.study_queries import StudySummary, list_studies
from gateway.synthetic import demo_studies, write_study
from pacs_adapters.dicom_scu import Peer, send


def run_demo(
    settings: Settings,
    say: Callable[[str], None] = print,
    keep_serving: bool = False,
    timeout_s: float = 120.0,
) -> list[StudySummary]:
    parts = Parts.build(settings)
    sender = next(iter(parts.directory.sources), None)
    if sender is None:
        raise ConfigError("the demo sends as the first source of the sources file; it has none")
    gateway = Gateway(parts)
    gateway.start()
    try:
        say(
            f"gateway: AE {settings.ae_title} on port {settings.dicom_port}, "
            f"data in {settings.data_dir.resolve()}"
        )
        studies = demo_studies(seed=0)
        inbox = settings.data_dir / "demo-input"
        peer = Peer("127.0.0.1", settings.dicom_port, settings.ae_title, sender.ae_title)
        for study in studies:
            files = write_study(study, inbox)
            report = send(files, peer)
            say(
                f"sent {study.kind:<14} {report.sent:>3} instances as {sender.ae_title} "
                f"({sender.title or sender.name}, region {sender.region})"
            )
        uids = {study.study_instance_uid for study in studies}
        summaries = _wait_complete(gateway, uids, timeout_s)
        kinds = {study.study_instance_uid: study.kind for study in studies}
        _print_table(summaries, kinds, say)
        if keep_serving:
            say("serving until interrupted (Ctrl-C)")
            gateway.wait()
        return summaries
    finally:
        gateway.stop()


def _wait_complete(gateway: Gateway, uids: set[str], timeout_s: float) -> list[StudySummary]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [s for s in list_studies(gateway.parts.db) if s.study_uid in uids]
        if len(found) == len(uids) and all(s.state == "complete" for s in found):
            return found
        if time.monotonic() > deadline:
            states = {s.study_uid: s.state for s in found}
            raise TimeoutError(f"studies not complete after {timeout_s} s: {states}")
        time.sleep(0.2)


def _print_table(
    summaries: list[StudySummary], kinds: dict[str, str], say: Callable[[str], None]
) -> None:
    say(f"\n{'STUDY':<14} {'STATE':<9} {'SOURCE':<10} RG {'MOD':<4} SER INST  STUDY UID")
    for s in summaries:
        say(
            f"{kinds[s.study_uid]:<14} {s.state:<9} {s.source:<10} {s.region} "
            f"{','.join(s.modalities):<4} {s.series_count:>3} {s.instance_count:>4}  {s.study_uid}"
        )
    say(f"{len(summaries)} studies received and assembled")
