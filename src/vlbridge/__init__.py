"""vlbridge: CLIP (contrastive image-text pretraining and its evaluation) and LiMBeR
(a single trained linear map from a frozen image encoder into a frozen causal LM),
plus the study that compares encoders with more or less language supervision.

The public entry point is the `vlbridge` command (see `vlbridge.cli`); library users
import the sub-packages directly (`vlbridge.data`, `vlbridge.models`, ...).
"""

__version__ = "0.1.0"
