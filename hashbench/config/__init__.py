"""What a run starts from: profiles, the paper's protocol and numbers, and suites."""
