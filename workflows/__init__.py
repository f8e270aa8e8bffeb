"""Example workflows that run out of the box (package data)."""
