"""Who may call: API keys and their limits."""
