"""Model providers and multi-agent steps (the planner issue)."""
