"""The decoding strategies `vlbridge.models.generation` implements, by name.

Kept apart from `generation` (which imports torch) so that `vlbridge caption --help` and
`vlbridge vqa --help` can list them without importing torch; `generation` imports them from here.
"""

STRATEGIES = ("greedy", "beam", "sample")
