"""stillshot: serial-crystallography still shots to structure factors."""

__version__ = "0.1.0"
