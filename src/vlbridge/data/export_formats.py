"""The formats `vlbridge.data.formats.export_records` writes, by name.

Kept apart from `formats` (which imports torch through the dataset resolver) so that
`vlbridge data export --help` can list them without importing torch; `formats` imports them from here.
"""

EXPORT_FORMATS = ("wds", "jsonl", "folder", "csv")  # what export_records writes
