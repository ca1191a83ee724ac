"""agent-runner: a policy-gated coding agent for a Telegram bot's owner."""
