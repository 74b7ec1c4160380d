"""RMM tools, each with a risk tier (the registry and the tools arrive with the tools issue)."""
