"""tsky: SkyPilot-style managed jobs on Temporal."""

__version__ = "0.1.0"
