import sys

from catkd.bench.cli import main

sys.exit(main())
