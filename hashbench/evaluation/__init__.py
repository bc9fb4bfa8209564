"""Evaluation: the ranking kernel, the metric table, metrics of stored cells, and statistics over queries and seeds."""
