"""Converters for numeric text-feature ops (token ids in, counts out)."""
