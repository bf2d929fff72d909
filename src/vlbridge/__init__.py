"""vlbridge: CLIP (contrastive image-text pretraining and its evaluation) and LiMBeR
(a single trained linear map from a frozen image encoder into a frozen causal LM),
plus the study that compares encoders with more or less language supervision.

The public entry points are the `vlbridge` command (see `vlbridge.cli`) and the Python API
(`vlbridge.api`): `vlbridge.load(path)` returns a loaded LiMBeR model or CLIP. Library users
may also import the sub-packages directly (`vlbridge.data`, `vlbridge.models`, ...).
"""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """`vlbridge.api.load`: a LiMBeR model or a CLIP from `path` (imported on first use, so `import vlbridge` stays light)."""
    from vlbridge.api import load as load_model

    return load_model(path, device=device)
