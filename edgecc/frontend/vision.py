"""Converters for vision and classic-ML ops TVM's importer lacks or gets wrong."""
