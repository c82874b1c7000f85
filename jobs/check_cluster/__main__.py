"""``python -m jobs.check_cluster [FILES...]``: the same as ``medlm check-cluster``."""

import sys

from jobs.check_cluster import cli

raise SystemExit(cli(sys.argv[1:]))
