"""The Telegram bot (aiogram 3): handlers in handlers.py, how it runs in runner.py."""
