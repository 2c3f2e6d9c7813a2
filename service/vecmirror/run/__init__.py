"""The run loop: the worker and its lanes, one batch of one mirror, whose fault an error is, paused
mirrors, resyncs, and the long-running process around them (HTTP probes, metrics sampling)."""
