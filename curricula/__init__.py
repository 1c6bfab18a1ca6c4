"""Task pools and samplers."""
