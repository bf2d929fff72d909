"""Data layer: the procedural shapes world, embedded datasets, real dataset formats, the feature cache."""
