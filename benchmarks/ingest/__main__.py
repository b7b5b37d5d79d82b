import sys

from benchmarks.ingest.cli import main

sys.exit(main())
