"""The reconcile agent's building blocks: read-model state, pure rendering of the mail-stack
files, validation of a candidate, atomic apply, maildirs, and a sandbox stack for tests."""
