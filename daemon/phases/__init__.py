"""Phases: one module per phase behind the interface in base.py."""
