"""Turn detection: when the caller starts speaking and when their turn is over."""
