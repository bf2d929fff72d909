"""DATASET_HELP: the datasets `vlbridge eval` evaluates on, as one help line.

Kept apart from `features_io` (which imports torch) so that `vlbridge eval ... --help` shows it
without importing torch; `features_io` imports it from here.
"""

DATASET_HELP = (
    "shapes[?shift=sketch|noisy|blur|invert] (also written shapes-shift:<shift>), fashion-mnist, "
    "animal-silhouettes, openclipart, twemoji, imagefolder:PATH, or any labelled spec (jsonl:, csv:, ...)"
)
