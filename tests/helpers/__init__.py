"""What several test modules share, imported from here rather than from one another (a test module imports
no other test module: tests/test_repository.py checks it). ``e2e`` runs the CLI in a subprocess on the reduced
quickstart; ``processes`` watches the process trees and loopback sockets of a Ray started by a test;
``loopback_cluster`` starts a multi-node Ray cluster on loopback (run as a module); ``s3_server`` serves a
local S3 bucket; ``synthetic`` writes a sweep with known answers; ``report`` reads and writes what report tests
compare; ``real_data``, ``fomo_layout``, ``folders_config`` and ``configs`` write small data in each layout the
readers take; ``cli`` checks a refused command's one-line answer."""
