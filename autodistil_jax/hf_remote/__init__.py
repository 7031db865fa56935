"""Files copied into exported checkpoints (not imported by autodistil_jax itself)."""
