"""The HTTP surface: OpenAI routes, operational routes, error mapping."""
