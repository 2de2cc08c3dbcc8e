"""editharm: apply knowledge edits to causal LMs and measure what they cost."""

__version__ = "0.1.0"
