"""A/B runs of steering arms over a dataset: datasets, grading, the runner and its report."""
