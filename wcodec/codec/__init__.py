"""Pipeline stages of the codec."""
