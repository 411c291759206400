"""``python -m jasper.cache verify DIR``: shard hashes, row counts, NaN/inf; exit status 1 on any problem."""

import sys

from jasper.cache.commands import main

sys.exit(main())
