"""``python -m jasper.storage.cache verify DIR``: shard hashes, row counts, NaN/inf; exit status 1 on any problem."""

import sys

from jasper.storage.cache.commands import main

sys.exit(main())
