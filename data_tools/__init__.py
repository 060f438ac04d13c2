"""Dataset preparation command-line tools for amych_tf."""
