"""What several test modules share, imported from here rather than from one another: ``e2e`` (running the
CLI in a subprocess on the reduced quickstart) and ``processes`` (process trees and loopback sockets of a
Ray started by a test)."""
