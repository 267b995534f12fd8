"""Data contracts, validated readers, loaders for the bundled datasets and a user's own catalogue."""
