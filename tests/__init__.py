"""The test suite (a package, so that test helpers import as ``tests.*``)."""

import os

# The pytest process is a Ray driver of the test cluster (tests/ray_cluster.py). Once that
# cluster stops, Ray Serve's router threads left in this process still call into Ray, and
# Ray's automatic ray.init() would then start a fresh local head at exit and leave its
# process running (a ResourceWarning that fails the run under -W error). Set before any
# import of ray: the switch is read when ray is first imported.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
