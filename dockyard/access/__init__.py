"""Identity and access: who is calling, what they may do, and the policy chain that enforces it."""
