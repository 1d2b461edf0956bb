"""Measured comparisons; each script writes its results as text under benchmarks/results/."""
