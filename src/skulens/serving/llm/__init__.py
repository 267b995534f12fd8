"""Query understanding and zero-result recovery through a cascade of tiers (rules → local GGUF
model → hosted models), each answer validated against a JSON schema and the catalogue."""
