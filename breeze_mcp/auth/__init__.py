"""Identity and credentials: passwords, API keys, OAuth grants and tokens, MFA, sessions."""
