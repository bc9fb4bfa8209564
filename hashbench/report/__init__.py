"""Reports from stored cells: leaderboard tables with captions, markdown, and figures."""
