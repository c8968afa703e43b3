"""Events and jobs the leaders service handles (tier evaluation arrives with its issue)."""
