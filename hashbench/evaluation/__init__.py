"""Evaluation: the ranking kernel, the metric table, statistics over queries and seeds, and search with a trained cell."""
