"""Response cache: keys, stores, stream tee and replay."""
