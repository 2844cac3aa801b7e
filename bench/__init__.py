"""`make bench`: the real API against bare baselines, and rebuild against raw replay.

Every figure is measured in one run on one machine and compared as a ratio to a baseline
measured in the same run, because absolute times on a shared 2-core machine are noise.
Benchmarks print; nothing here asserts on time.
"""
