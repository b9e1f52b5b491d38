"""The Telegram bot (aiogram): a thin client of the API, run by ``python -m bot``."""
