"""The pull-through cache (ACR's artifact cache): cache rules, credential sets and the read path."""
