"""The harness: real services for the tests and the benchmarks, each started on free
loopback ports over a fresh folder and stopped afterwards.

It lives here, in the tests, because the tests are its main user and were its first home;
the benchmarks import it from here (``benchmarks/`` and ``tests/`` both sit in the
repository checkout, neither is installed, and both run from its root). So that a benchmark
needs no test runner, nothing in it imports pytest: a missing tool or data set raises
:class:`ServiceUnavailable`, which ``tests/conftest.py`` turns into a skip with its reason
and a benchmark reports as the reason it cannot run.

Modules:

- ``processes``: free ports, waiting for a listening port, stopping a child, finding a tool,
  ``ROOT``, the shared real DICOM files, :class:`ServiceError` / :class:`ServiceUnavailable`
- ``postgres``: a private PostgreSQL cluster (stop ``-m immediate`` and start again)
- ``seaweedfs``: the S3 server, SeaweedFS (stop or kill, and start again with the same data)
- ``broker``: Redis, non-persistent, restartable in place
- ``dcmtk``: ``storescu``, ``storescp``, ``dciodvfy``
- ``orthanc``: Orthanc with its own index and storage
- ``series``: synthetic CT series and chest radiographs as Part-10 files
- ``lossless``: greyscale images in each lossless syntax, by independent encoders
- ``gateway_process``: ``aigw serve`` as a separate process, configured by ``AIGW_*``
- ``regional``: the regional system's SEMD intake, recording every POST
"""

from tests.services.broker import RedisServer, redis_server
from tests.services.dcmtk import (
    DCMTK_ENV,
    Storescp,
    acknowledged_files,
    dciodvfy_errors,
    storescu,
    storescu_command,
)
from tests.services.gateway_process import GatewayProcess, gateway_env, indexed_rows
from tests.services.orthanc import Orthanc
from tests.services.postgres import Postgres, postgres_server
from tests.services.processes import (
    ROOT,
    SHARED_DICOM,
    ServiceError,
    ServiceUnavailable,
    free_port,
    listening_sockets,
    require_shared_data,
    require_tool,
    stop_process,
    wait_for_port,
    wait_until,
)
from tests.services.regional import RegionalSystem
from tests.services.seaweedfs import S3_CREDENTIALS, S3Server, s3_server
from tests.services.series import CT_IMAGE_STORAGE, ct_instance, make_uid, write_ct_series

__all__ = [
    "CT_IMAGE_STORAGE",
    "DCMTK_ENV",
    "ROOT",
    "S3_CREDENTIALS",
    "SHARED_DICOM",
    "GatewayProcess",
    "Orthanc",
    "Postgres",
    "RedisServer",
    "RegionalSystem",
    "S3Server",
    "ServiceError",
    "ServiceUnavailable",
    "Storescp",
    "acknowledged_files",
    "ct_instance",
    "dciodvfy_errors",
    "free_port",
    "gateway_env",
    "indexed_rows",
    "listening_sockets",
    "make_uid",
    "postgres_server",
    "redis_server",
    "require_shared_data",
    "require_tool",
    "s3_server",
    "stop_process",
    "storescu",
    "storescu_command",
    "wait_for_port",
    "wait_until",
    "write_ct_series",
]
