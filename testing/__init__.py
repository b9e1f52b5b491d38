"""Real test servers and protocol stand-ins for tests/ and bench/: PostgreSQL, Redis, sshd,
podman on loopback; the model APIs, GitHub and Telegram as stand-ins speaking their protocols.
Nothing in the product imports this package."""
