"""Infer tasks of the eCLIP MONAI Label app (``main.py`` wires them to the server)."""
