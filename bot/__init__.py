"""The Telegram bot (aiogram): a thin client of the API. Built with the Product Owner issue."""
