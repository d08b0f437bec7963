"""Orchestration: Ray Tune sweep, trial drivers, Ray Train expert runs, the merge actor.

Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported; setting it here, before any module
of this package imports Ray, keeps a local Ray in single-node mode on 127.0.0.1.
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
