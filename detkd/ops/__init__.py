"""Box ops, priors, assigners and NMS."""
