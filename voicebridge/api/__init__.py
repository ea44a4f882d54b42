"""Our own HTTP API: placing calls, health and metrics."""
