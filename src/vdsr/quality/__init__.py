"""The benchmark protocol behind the published numbers: the degradation and the metrics."""
