"""The networks: VDSR, its building blocks, the Inception example and the model summary."""
