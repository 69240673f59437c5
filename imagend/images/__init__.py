"""Pixels: output formats (encoding, thumbnails, metadata) and strict decoding of input images."""
