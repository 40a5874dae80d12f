"""mosaics-lab: an experiment platform for Memory Mosaics research."""

__version__ = "0.1.0"
