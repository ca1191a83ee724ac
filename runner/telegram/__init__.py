"""The owner's Telegram front end: `bot` (commands, policy chat, buttons over `Actions`) and `wiring` (the
running service behind it, polling or webhook)."""
