"""`python -m app.bot`: run the bot (BOT_MODE polling or webhook)."""

from app.bot.runner import main

if __name__ == "__main__":
    main()
