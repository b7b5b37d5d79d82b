import sys

from benchmarks.inference.cli import main

sys.exit(main())
