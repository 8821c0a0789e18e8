"""Measurement benchmarks: real training steps compared with the cost model and the recommender."""
