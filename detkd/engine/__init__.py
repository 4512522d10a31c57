"""Training engine: loop, checkpoints, distributed helpers, logging."""
