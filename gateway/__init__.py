"""The HTTP gateway: OpenAI wire format, auth, budgets, forwarding, config, stores."""
