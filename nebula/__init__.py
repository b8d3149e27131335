"""Nebula: an Omaha update server for Flatcar Container Linux fleets."""

__version__ = "0.1.0"
