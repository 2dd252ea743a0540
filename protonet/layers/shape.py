"""Shape layers: Concat, Slice, Flatten, Reshape, Tile."""
