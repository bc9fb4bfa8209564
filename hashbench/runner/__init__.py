"""Running things: the plan resolves every cell once, the grid claims and runs them, the cell runner trains, evaluates
and stores one; throughput benchmarks; a finished cell as a search index."""
