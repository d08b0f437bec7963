"""Orchestration: Ray Tune sweep, trial drivers, Ray Train expert runs, the merge service.

Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported; setting it here, before any module
of this package imports Ray, keeps an embedded local Ray in single-node mode on 127.0.0.1. A process
that joins a cluster (RAY_ADDRESS set, e.g. inside ``ray job submit``) is left as the cluster is.
"""

import os

if not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
