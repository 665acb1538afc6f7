"""Service: lifecycle (signals, sd_notify, watchdog), logging, metrics endpoint and the CLI."""
