"""The pipeline: bounded queues, one thread per stage (acquisition → inference → scoring → publishing)."""
