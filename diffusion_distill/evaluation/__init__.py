"""Sample-quality metrics: Fréchet distances, Inception (FID/IS), FD-digits."""
