"""Command handlers: load state, core.decide(), append to the log, wait for the read model."""
