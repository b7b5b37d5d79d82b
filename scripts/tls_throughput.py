"""DICOM TLS beside plain TCP: the same ``aigw serve``, the same kind of files, storescu
over each in turns (issue 11: TLS may cost at most 15% of plain throughput).

    PYTHONPATH=. python scripts/tls_throughput.py --instances 200 --size 512 --rounds 3

Each turn sends a fresh series (new UIDs, same sizes), so every instance takes the whole
ingest path (a repeat would be answered as a duplicate without a write). Certificates are
made by the test harness's PKI (tests/ingest/tls_certs.py); DCMTK is the sender.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ingest.tls_certs import Pki  # noqa: E402
from tests.services import GatewayProcess, free_port, gateway_env, write_ct_series  # noqa: E402


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (less noisy than wall time on a
    shared machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _storescu(
    port: int, calling_ae: str, tls: list[str], files: list[Path], server: int
) -> tuple[float, float]:
    """Wall seconds of one storescu run and the gateway's CPU seconds meanwhile."""
    cpu, started = _cpu_s(server), time.perf_counter()
    subprocess.run(
        ["storescu", "-R", *tls, "-aet", calling_ae, "-aec", "AIGW", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        check=True,
        capture_output=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    return time.perf_counter() - started, _cpu_s(server) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200, help="instances per turn")
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each CT slice")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each transport")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aigw-tls-bench-") as folder:
        work = Path(folder)
        pki = Pki(work / "pki")
        client = pki.issue("tls-cami.example")
        sources = work / "sources.yaml"
        sources.write_text(
            yaml.safe_dump(
                {
                    "sources": [
                        {"name": "irk-cami", "ae_title": "IRK_CAMI", "region": "38"},
                        {"name": "tls-cami", "ae_title": "TLS_CAMI", "region": "38",
                         "tls_subject": "tls-cami.example"},
                    ]
                }
            )
        )  # fmt: skip
        tls_port = free_port()
        env = gateway_env(
            sources_file=str(sources),
            quiet_period_s="3600",
            min_free_bytes="0",
            log_level="WARNING",
            dicom_tls_port=str(tls_port),
            dicom_tls_cert_file=str(pki.server.cert),
            dicom_tls_key_file=str(pki.server.key),
            dicom_tls_client_ca_file=str(pki.ca),
        )
        (work / "var").mkdir()
        gateway = GatewayProcess(work / "var", free_port(), env, [])
        gateway.start()
        tls = ["+tls", str(client.key), str(client.cert), "+cf", str(pki.ca)]
        transports = {
            "plain": (gateway.dicom_port, "IRK_CAMI", []),
            "tls": (tls_port, "TLS_CAMI", tls),
        }
        seconds: dict[str, list[float]] = {name: [] for name in transports}
        cpu: dict[str, list[float]] = {name: [] for name in transports}
        assert gateway.process is not None
        try:
            megabytes = 0.0
            for turn in range(args.rounds):
                for name, (port, calling_ae, options) in transports.items():
                    files = write_ct_series(
                        work / f"{name}{turn}", args.instances, seed=(name, turn), size=args.size
                    )
                    megabytes = sum(f.stat().st_size for f in files) / 1e6
                    wall, used = _storescu(port, calling_ae, options, files, gateway.process.pid)
                    seconds[name].append(wall)
                    cpu[name].append(used)
        finally:
            gateway.stop()
    # The median is the headline; the best turn shows the cost without a busy neighbour.
    median = {name: args.instances / statistics.median(times) for name, times in seconds.items()}
    best = {name: args.instances / min(times) for name, times in seconds.items()}
    print(f"{args.instances} CT instances of {args.size}² ({megabytes:.1f} MB) per turn")
    for name, rate in median.items():
        times = ", ".join(f"{t:.2f}" for t in seconds[name])
        print(f"  {name:5}: {rate:7.1f} instances/s, {rate * megabytes / args.instances:6.1f} "
              f"MB/s median, {best[name]:7.1f} instances/s best (turns: {times} s)")  # fmt: skip
    print(f"  TLS / plain: {median['tls'] / median['plain']:.3f} median, "
          f"{best['tls'] / best['plain']:.3f} best")  # fmt: skip
    per = {name: 1000 * statistics.median(used) / args.instances for name, used in cpu.items()}
    print(f"  gateway CPU per instance: plain {per['plain']:.2f} ms, TLS {per['tls']:.2f} ms "
          f"({per['tls'] / per['plain']:.3f}×)")  # fmt: skip


if __name__ == "__main__":
    main()
