"""Renderers of the session path model: ``tree`` (terminal), ``json``; ``table`` for listings.

Renderers take model objects only; they never talk to a store or backend.
"""
